"""The job runner in-process (no Celery): failure kinds, time limit, and the embedding feature cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import select

from glai_common.migrate import upgrade
from glai_common.models import Artifact, Dataset, FeatureCache, Job
from glai_common.settings import Settings
from tests.worker.harness import insert_digits_job, job_state, tiny_config
from worker import pipeline_runner
from worker.context import WorkerContext

FAST = tiny_config(pruning={"enabled": False}, baseline={"enabled": False})


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WorkerContext]:
    url = f"sqlite:///{tmp_path / 'glai.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path, database_url=url, broker_url="memory://",
                        heartbeat_interval_s=0.2, worker_lease_s=30)
    context = WorkerContext.from_settings(settings, enqueue=lambda _job_id: None)
    yield context
    context.dispose()


def _run(ctx: WorkerContext, config: dict[str, Any], **job: Any) -> Job:
    job_id = insert_digits_job(ctx.sessions, ctx.storage.root, config, **job)
    pipeline_runner.execute_job(ctx, job_id)
    return job_state(ctx.sessions, job_id)


def _log_text(ctx: WorkerContext, job_id: str) -> str:
    from glai_common.jobs import read_log

    with ctx.sessions() as session:
        return "\n".join(line.text for line in read_log(session, job_id, limit=10_000))


def test_bad_config_is_a_user_error(ctx: WorkerContext) -> None:
    job = _run(ctx, {**FAST, "structural": {"no_such_option": 1}})
    assert job.state == "failed" and job.failure_kind == "user_error"
    assert "no_such_option" in (job.failure_message or "")


def test_gpu_oom_says_what_to_shrink(ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    def oom(*_: Any, **__: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("glai_core.pipeline.run_pipeline", oom)
    job = _run(ctx, FAST)
    assert job.state == "failed" and job.failure_kind == "gpu_oom" and job.attempts == 1
    assert "batch_size" in (job.failure_message or "") and "hidden" in (job.failure_message or "")


def test_unexpected_error_is_internal_with_traceback(ctx: WorkerContext,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("solver exploded")

    monkeypatch.setattr("glai_core.pipeline.run_pipeline", boom)
    job = _run(ctx, FAST)
    assert job.failure_kind == "internal" and "solver exploded" in (job.failure_message or "")
    assert "Traceback (most recent call last)" in _log_text(ctx, job.id)


def test_time_limit_fails_as_timeout_and_keeps_the_checkpoint(ctx: WorkerContext) -> None:
    job = _run(ctx, tiny_config(structural={"max_epochs": 50, "threshold": 0.0}), time_limit_s=0)
    assert job.state == "failed" and job.failure_kind == "timeout"
    assert (ctx.storage.root / "jobs" / job.id / "checkpoints" / "structural.safetensors").exists()


def test_a_duplicate_message_for_a_finished_job_is_dropped(ctx: WorkerContext) -> None:
    job = _run(ctx, FAST)
    assert job.state == "succeeded"
    assert pipeline_runner.execute_job(ctx, job.id) == "skipped"
    assert job_state(ctx.sessions, job.id).attempts == 1


# A handful of real review sentences: the real MiniLM embeds them (no stand-in for the backbone).
REVIEWS = [
    ("A wonderful film, moving and beautifully acted.", "pos"),
    ("The food was delicious and the staff were lovely.", "pos"),
    ("Best purchase this year, it works perfectly.", "pos"),
    ("Such a delightful book, I could not put it down.", "pos"),
    ("Excellent service, they fixed my problem in minutes.", "pos"),
    ("The concert was amazing and the band sounded great.", "pos"),
    ("Comfortable, stylish shoes that I love wearing.", "pos"),
    ("A brilliant holiday with sunny beaches and kind people.", "pos"),
    ("A dull film, badly acted and far too long.", "neg"),
    ("The food was cold and the waiter was rude.", "neg"),
    ("Worst purchase ever, it broke after two days.", "neg"),
    ("Such a boring book, I gave up halfway through.", "neg"),
    ("Terrible service, nobody answered my complaint.", "neg"),
    ("The concert was awful and the sound was distorted.", "neg"),
    ("Uncomfortable shoes that fell apart within a week.", "neg"),
    ("A miserable holiday, it rained and the hotel was dirty.", "neg"),
]


def _text_dataset(ctx: WorkerContext) -> str:
    import csv

    with ctx.session() as session:
        dataset = Dataset(owner="alice", name="reviews", kind="text", source="upload", file_format="csv",
                          text_column="text", label_column="label", sha256="0" * 64, size_bytes=1,
                          n_samples=len(REVIEWS), n_features=384, n_classes=2, class_names=["neg", "pos"],
                          storage_key="x")
        session.add(dataset)
        session.flush()
        dataset.storage_key = f"datasets/{dataset.id}"
        raw = ctx.storage.local_path(f"{dataset.storage_key}/raw.csv")
        raw.parent.mkdir(parents=True)
        with raw.open("w", newline="") as handle:
            csv.writer(handle).writerows([("text", "label"), *REVIEWS])
        return dataset.id


def test_text_dataset_is_embedded_once_and_cached(ctx: WorkerContext,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from glai_core import backbones

    calls: list[int] = []
    real_embed = backbones.embed_raw

    def counting_embed(backbone: Any, inputs: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(len(inputs))  # counts, then runs the real MiniLM
        return real_embed(backbone, inputs, *args, **kwargs)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr("glai_core.backbones.embed_raw", counting_embed)
    dataset_id = _text_dataset(ctx)
    job_ids = []
    for _ in range(2):
        with ctx.session() as session:
            job = Job(owner="alice", dataset_id=dataset_id, time_limit_s=600,
                      spec={"config": FAST, "backbone": "minilm", "validation_fraction": 0.25})
            session.add(job)
            session.flush()
            job_ids.append(job.id)
        pipeline_runner.execute_job(ctx, job_ids[-1])
    assert calls == [len(REVIEWS)]  # the second job reused the cache
    with ctx.sessions() as session:
        jobs = [session.get(Job, job_id) for job_id in job_ids]
        assert [j.state for j in jobs if j] == ["succeeded"] * 2, [j.failure_message for j in jobs if j]
        cache = session.scalars(select(FeatureCache)).one()
        assert (cache.dataset_id, cache.backbone, cache.n_features) == (dataset_id, "minilm", 384)
        assert cache.storage_key == f"features/{dataset_id}/minilm"
        artifact = session.scalars(select(Artifact).where(Artifact.job_id == job_ids[0],
                                                          Artifact.name == "trained")).one()
    from glai_core.artifacts import read_metadata

    metadata = read_metadata(ctx.storage.local_path(artifact.storage_key))
    assert metadata["backbone"]["name"] == "minilm" and metadata["class_names"] == ["neg", "pos"]
    assert "[embedding] started" in _log_text(ctx, job_ids[0])
    assert "reusing cached minilm features" in _log_text(ctx, job_ids[1])
    from glai_core.predict import Predictor

    predictor = Predictor.load(ctx.storage.local_path(artifact.storage_key))
    assert predictor.predict_proba(["A lovely, charming little film."]).shape == (1, 2)  # raw text in
