"""The worker's embedding phase in-process with the real MiniLM: one event per batch, and a stop request
between batches cancels it without leaving a feature cache behind (so the next job embeds afresh)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from glai_common.migrate import upgrade
from glai_common.models import Dataset, FeatureCache, Job
from glai_common.settings import Settings
from glai_core.hooks import Cancelled, Event
from tests.backbones import corpus
from worker.context import WorkerContext
from worker.datasets import DatasetInfo, load_training_data
from worker.hooks import STOP_CANCEL, DatabaseHooks
from worker.reporter import JobReporter


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WorkerContext]:
    url = f"sqlite:///{tmp_path / 'glai.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path, database_url=url, broker_url="memory://")
    context = WorkerContext.from_settings(settings, enqueue=lambda _job_id: None)
    yield context
    context.dispose()


class StopAfterBatches(DatabaseHooks):
    """Records events and asks to stop (as a cancel would) once ``batches`` batches are embedded."""

    def __init__(self, reporter: JobReporter, batches: int) -> None:
        super().__init__(reporter, None, time.monotonic() + 600)
        self.batches = batches
        self.events: list[Event] = []
        self.started: list[str] = []

    def on_phase_start(self, phase: str) -> None:
        self.started.append(phase)
        super().on_phase_start(phase)

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        super().on_event(event)
        if len(self.events) >= self.batches:
            self.stop_reason = STOP_CANCEL


def _text_dataset(ctx: WorkerContext) -> tuple[DatasetInfo, str]:
    rows = [(t, "positive") for t in corpus.POSITIVE] + [(t, "negative") for t in corpus.NEGATIVE]
    with ctx.session() as session:
        dataset = Dataset(owner="alice", name="reviews", kind="text", source="upload", file_format="csv",
                          text_column="review", label_column="sentiment", sha256="0" * 64, size_bytes=1,
                          n_samples=len(rows), n_features=384, n_classes=2,
                          class_names=["negative", "positive"], storage_key="x")
        session.add(dataset)
        session.flush()
        dataset.storage_key = f"datasets/{dataset.id}"
        job = Job(owner="alice", dataset_id=dataset.id, time_limit_s=600, spec={"backbone": "minilm"})
        session.add(job)
        session.flush()
        raw = ctx.storage.local_path(f"{dataset.storage_key}/raw.csv")
        raw.parent.mkdir(parents=True)
        corpus.write_text_csv(raw, rows)
        info = DatasetInfo(dataset.id, "text", "csv", "review", "sentiment", dataset.storage_key)
        return info, job.id


def test_embedding_reports_each_batch_and_stops_between_batches(ctx: WorkerContext) -> None:
    dataset, job_id = _text_dataset(ctx)
    n = len(corpus.POSITIVE) + len(corpus.NEGATIVE)
    assert n > 64  # at least two batches of the CPU batch size

    hooks = StopAfterBatches(JobReporter(ctx, job_id, "test-worker"), batches=1)
    with pytest.raises(Cancelled):
        load_training_data(ctx, dataset, "minilm", hooks, "cpu")
    assert hooks.started == ["embedding"]
    [event] = hooks.events
    assert (event.phase, event.step, event.total_steps) == ("embedding", 1, 2)
    assert event.progress == pytest.approx(64 / n) and event.metrics["embedded_samples"] == 64
    with ctx.session() as session:
        assert session.scalar(select(func.count()).select_from(FeatureCache)) == 0
    assert not (ctx.storage.local_path(f"features/{dataset.id}/minilm") / "meta.json").exists()

    # Not stopped: every batch reported, the cache written; a second load skips the phase entirely.
    hooks = StopAfterBatches(JobReporter(ctx, job_id, "test-worker"), batches=10**6)
    loaded = load_training_data(ctx, dataset, "minilm", hooks, "cpu")
    assert [e.step for e in hooks.events] == [1, 2] and hooks.events[-1].progress == 1.0
    assert loaded.data.x.shape == (n, 384) and loaded.data.class_names == ["negative", "positive"]
    assert loaded.preprocessing["backbone"] == "minilm"
    again = StopAfterBatches(JobReporter(ctx, job_id, "test-worker"), batches=10**6)
    cached = load_training_data(ctx, dataset, "minilm", again, "cpu")
    assert again.started == [] and again.events == []
    assert (cached.data.x[:] == loaded.data.x[:]).all()
