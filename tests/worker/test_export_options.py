"""The exporting phase in-process (no Celery): the ONNX copies are optional (GLAI_EXPORT_ONNX), a copy
that cannot be made leaves the job and its models alone, and the log reports each check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from glai_common.jobs import read_log
from glai_common.migrate import upgrade
from glai_common.models import Artifact
from glai_common.settings import Settings
from tests.worker.harness import insert_digits_job, job_state, tiny_config
from worker import pipeline_runner
from worker.context import WorkerContext

FAST = tiny_config(pruning={"enabled": False}, baseline={"enabled": False})


def _context(tmp_path: Path, **settings: Any) -> WorkerContext:
    url = f"sqlite:///{tmp_path / 'glai.db'}"
    upgrade(url)
    return WorkerContext.from_settings(
        Settings(data_dir=tmp_path, database_url=url, broker_url="memory://", heartbeat_interval_s=0.2,
                 worker_lease_s=30, **settings), enqueue=lambda _job_id: None)


@pytest.fixture
def contexts(tmp_path: Path) -> Iterator[list[WorkerContext]]:
    made: list[WorkerContext] = []
    yield made
    for ctx in made:
        ctx.dispose()


def _run(ctx: WorkerContext) -> tuple[str, dict[str, Artifact], str]:
    job_id = insert_digits_job(ctx.sessions, ctx.storage.root, FAST)
    pipeline_runner.execute_job(ctx, job_id)
    with ctx.sessions() as session:
        artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        log = "\n".join(line.text for line in read_log(session, job_id, limit=10_000))
    job = job_state(ctx.sessions, job_id)
    assert job.state == "succeeded", (job.failure_kind, job.failure_message, log)
    return job_id, artifacts, log


def test_the_log_reports_each_check(tmp_path: Path, contexts: list[WorkerContext]) -> None:
    contexts.append(_context(tmp_path))
    _, artifacts, log = _run(contexts[0])
    assert set(artifacts) == {"trained", "trained.onnx", "config.json"}
    check = artifacts["trained.onnx"].meta["check"]
    assert f"trained.onnx: onnxruntime matches PyTorch on {check['rows']} held-out rows" in log
    assert check["rows"] == 120 and check["passed"]  # 600 digits, 20 % held out


def test_no_onnx_copies_when_switched_off(tmp_path: Path, contexts: list[WorkerContext]) -> None:
    contexts.append(_context(tmp_path, export_onnx=False))
    _, artifacts, log = _run(contexts[0])
    assert set(artifacts) == {"trained", "config.json"} and "onnxruntime" not in log


def test_a_copy_that_cannot_be_made_leaves_the_job_alone(tmp_path: Path, contexts: list[WorkerContext],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*_: Any, **__: Any) -> None:
        raise RuntimeError("exporter broke")

    monkeypatch.setattr("glai_core.onnx_export.export_onnx", fails)
    contexts.append(_context(tmp_path))
    job_id, artifacts, log = _run(contexts[0])
    assert set(artifacts) == {"trained", "config.json"}
    assert "no ONNX copy of trained: RuntimeError: exporter broke" in log
    assert not list((contexts[0].storage.root / "jobs" / job_id).glob("*.onnx"))
