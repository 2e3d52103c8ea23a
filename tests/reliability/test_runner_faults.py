"""The runner in-process, with faults that a real worker cannot be made to show on demand: a step that
ignores cancels (Python loop; native wait), a time limit spent over several attempts, and the rules of
re-sending stale queued jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from glai_common import jobs
from glai_common.migrate import upgrade
from glai_common.models import Job, JobTransition, utcnow
from glai_common.settings import Settings
from tests.worker.harness import insert_digits_job, job_state, tiny_config, wait_for
from worker import pipeline_runner
from worker.context import WorkerContext
from worker.reaper import resend_stale_queued

pytestmark = pytest.mark.slow
FAST = tiny_config(pruning={"enabled": False}, baseline={"enabled": False})


def _ctx(tmp_path: Path, depth: int | None = 0, **settings: Any) -> WorkerContext:
    url = f"sqlite:///{tmp_path / 'glai.db'}"
    upgrade(url)
    values: dict[str, Any] = {"data_dir": tmp_path, "database_url": url, "broker_url": "memory://",
                              "heartbeat_interval_s": 0.2, "worker_lease_s": 30, **settings}
    sent: list[str] = []
    ctx = WorkerContext.from_settings(Settings(**values), enqueue=sent.append, queue_depth=lambda: depth)
    ctx.sent = sent  # type: ignore[attr-defined]
    return ctx


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WorkerContext]:
    context = _ctx(tmp_path, cancel_grace_s=1.0, cancel_force_s=0)
    yield context
    context.dispose()


def _states(ctx: WorkerContext, job_id: str) -> list[tuple[str | None, str, str]]:
    with ctx.sessions() as session:
        return [(r.from_value, r.to_value, r.reason) for r in session.scalars(
            select(JobTransition).where(JobTransition.job_id == job_id, JobTransition.field == "state")
            .order_by(JobTransition.id))]


def _run_in_thread(ctx: WorkerContext, job_id: str, **kwargs: Any) -> tuple[threading.Thread, list[str]]:
    result: list[str] = []
    def run() -> None:
        result.append(pipeline_runner.execute_job(ctx, job_id, **kwargs))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_a_step_that_ignores_the_cancel_is_interrupted(ctx: WorkerContext,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def stubborn(*_: Any, **__: Any) -> None:
        while True:  # never polls should_stop: a step far longer than the grace period
            sum(range(1000))

    monkeypatch.setattr("glai_core.pipeline.run_pipeline", stubborn)
    job_id = insert_digits_job(ctx.sessions, ctx.storage.root, FAST)
    thread, result = _run_in_thread(ctx, job_id)
    wait_for(lambda: job_state(ctx.sessions, job_id).state == "running", 20, "the claim")
    with ctx.session() as session:
        jobs.request_cancel(session, job_id)
    asked = time.monotonic()
    thread.join(20)
    assert result == ["cancelled"] and time.monotonic() - asked < 10
    assert [s[1] for s in _states(ctx, job_id)] == ["running", "cancelling", "cancelled"]


def test_a_step_stuck_in_native_code_is_recorded_cancelled_and_the_process_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path, cancel_grace_s=0.5, cancel_force_s=1.5)
    release = threading.Event()
    exits: list[float] = []
    # Blocks inside a lock acquire: no Python bytecode runs, so no exception can be injected.
    monkeypatch.setattr("glai_core.pipeline.run_pipeline", lambda *_a, **_k: release.wait())
    job_id = insert_digits_job(ctx.sessions, ctx.storage.root, FAST)
    thread, result = _run_in_thread(ctx, job_id, exit_process=lambda: (exits.append(time.monotonic()),
                                                                       release.set()))
    wait_for(lambda: job_state(ctx.sessions, job_id).state == "running", 20, "the claim")
    with ctx.session() as session:
        jobs.request_cancel(session, job_id)
    wait_for(lambda: exits, 15, "the forced stop")
    thread.join(20)
    trail = _states(ctx, job_id)
    assert [s[1] for s in trail] == ["running", "cancelling", "cancelled"]
    assert "did not stop within 1.5 s" in trail[-1][2]
    assert result == ["lost"]  # the runner's own, late final state was refused: recorded once
    assert not (ctx.storage.root / "jobs" / job_id / "checkpoints").exists()  # cancelled: nothing to resume
    ctx.dispose()


def test_the_time_limit_counts_every_attempt(ctx: WorkerContext) -> None:
    job_id = insert_digits_job(ctx.sessions, ctx.storage.root,
                               tiny_config(structural={"max_epochs": 50, "threshold": 0.0}), time_limit_s=20)
    with ctx.session() as session:  # attempt 1 ran 25 s, then its worker was lost
        jobs.claim_job(session, job_id, "old-worker")
    with ctx.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow()))
        session.execute(update(JobTransition).where(JobTransition.job_id == job_id,
                                                    JobTransition.to_value == "running")
                        .values(at=utcnow() - timedelta(seconds=25)))
    with ctx.session() as session:
        assert jobs.reap_expired_leases(session) == [job_id]
    with ctx.sessions() as session:
        assert 24 < jobs.running_seconds(session, job_id) < 30
    assert pipeline_runner.execute_job(ctx, job_id) == "failed (timeout)"
    job = job_state(ctx.sessions, job_id)
    assert job.failure_kind == "timeout" and job.attempts == 2
    assert "over all attempts" in (job.failure_message or "")
    assert job.summary["partial"] is True and job.summary["stopped_by"] == "timeout"
    assert job.summary["phases"]["structural"]["steps"] >= 1
    assert (ctx.storage.root / job.summary["phases"]["structural"]["checkpoint"]).exists()


def _age(session: Any, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow() - timedelta(seconds=9)))


def test_stale_queued_jobs_are_resent_once_and_only_when_messages_are_missing(tmp_path: Path) -> None:
    job_id = insert_digits_job(_ctx(tmp_path).sessions, tmp_path / "storage", FAST)
    full = _ctx(tmp_path, depth=1, requeue_stale_queued_s=5)
    empty = _ctx(tmp_path, depth=0, requeue_stale_queued_s=5)
    assert resend_stale_queued(empty) == []  # still within its grace period
    with empty.session() as session:
        _age(session, job_id)
    assert resend_stale_queued(full) == []  # the queue still holds a message per queued job
    assert resend_stale_queued(empty) == [job_id] and empty.sent == [job_id]  # type: ignore[attr-defined]
    assert resend_stale_queued(empty) == []  # a new grace period started
    assert any("sent to the queue again" in line.text for line in jobs.read_log(empty.sessions(), job_id))

    broken = _ctx(tmp_path, depth=None, requeue_stale_queued_s=5)
    broken.enqueue = lambda _job_id: (_ for _ in ()).throw(ConnectionError("broker down"))
    with broken.session() as session:
        _age(session, job_id)
    with pytest.raises(ConnectionError):
        resend_stale_queued(broken)
    assert resend_stale_queued(empty) == [job_id]  # the failed send was handed back, not swallowed
    for context in (full, empty, broken):
        context.dispose()
