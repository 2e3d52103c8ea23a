"""A timed-out job keeps its checkpoints; resumed, it continues from them with a fresh time limit,
succeeds, and then its checkpoints are removed. Resuming is refused outside its rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from glai_common import jobs
from glai_common.migrate import upgrade
from glai_common.models import Job
from glai_common.settings import Settings
from tests.worker.harness import insert_digits_job, job_state, tiny_config
from worker import pipeline_runner
from worker.context import WorkerContext


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WorkerContext]:
    url = f"sqlite:///{tmp_path / 'glai.db'}"
    upgrade(url)
    context = WorkerContext.from_settings(Settings(data_dir=tmp_path, database_url=url, broker_url="memory://",
                                                   heartbeat_interval_s=0.2, worker_lease_s=30,
                                                   checkpoint_interval_s=0),
                                          enqueue=lambda _job_id: None)
    yield context
    context.dispose()


def _log(ctx: WorkerContext, job_id: str) -> list[str]:
    with ctx.sessions() as session:
        return [line.text for line in jobs.read_log(session, job_id, limit=10_000)]


def test_a_timed_out_job_resumes_from_its_checkpoint_and_then_drops_it(ctx: WorkerContext) -> None:
    config = tiny_config(structural={"max_epochs": 8, "min_epochs": 8, "threshold": 0.0},
                         pruning={"enabled": False})
    job_id = insert_digits_job(ctx.sessions, ctx.storage.root, config, time_limit_s=0)  # out of time at once
    assert pipeline_runner.execute_job(ctx, job_id) == "failed (timeout)"
    checkpoints = ctx.storage.root / "jobs" / job_id / "checkpoints"
    saved = pipeline_runner.checkpoint_states(checkpoints)["structural"]["step"]
    assert saved >= 1

    with ctx.session() as session:
        jobs.resume_job(session, job_id, max_attempts=3, time_limit_s=600)
    job = job_state(ctx.sessions, job_id)
    assert (job.state, job.failure_kind, job.summary, job.time_limit_s) == ("queued", None, {}, 600)
    assert pipeline_runner.execute_job(ctx, job_id) == "succeeded"
    log = _log(ctx, job_id)
    second = log[next(i for i, line in enumerate(log) if line.startswith("attempt 2")):]
    steps = [int(line.split()[2].split("/")[0]) for line in second if line.startswith("[structural] step ")]
    assert steps[0] == saved + 1 and steps[-1] == 8  # continued, not started over
    assert not checkpoints.exists()  # succeeded: its checkpoints are gone
    assert job_state(ctx.sessions, job_id).attempts == 2


def test_resume_rules(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        with pytest.raises(jobs.ResumeRefused, match="is queued"):
            jobs.resume_job(session, job_id, max_attempts=3)
        jobs.claim_job(session, job_id, "w1")
        jobs.finish(session, job_id, "w1", "failed", reason="bad column", failure_kind="user_error")
    with sessions.begin() as session:
        with pytest.raises(jobs.ResumeRefused, match="because of its request"):
            jobs.resume_job(session, job_id, max_attempts=3)
        session.execute(update(Job).where(Job.id == job_id).values(failure_kind="timeout"))
    with sessions.begin() as session:
        with pytest.raises(jobs.ResumeRefused, match="all 1 of its attempts"):
            jobs.resume_job(session, job_id, max_attempts=1)
        assert jobs.resume_job(session, job_id, max_attempts=2).state == "queued"
