"""Only running time counts against ``time_limit_s``: an attempt lost with its worker is charged up to its
last heartbeat, not the wait for its lease to expire or for a reaper, nor the time queued after."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from glai_common import jobs
from glai_common.migrate import upgrade
from glai_common.models import Job, JobTransition, utcnow
from glai_common.settings import Settings
from tests.worker.harness import insert_digits_job, job_state, tiny_config
from worker import pipeline_runner
from worker.context import WorkerContext


def _lost_after(sessions: sessionmaker[Session], job_id: str, ran_s: float, waited_s: float) -> None:
    """Attempt 1 was claimed ``ran_s + waited_s`` ago, heartbeat for ``ran_s``, then its worker died; the
    lease has just expired and a reaper requeues the job now."""
    with sessions.begin() as session:
        assert jobs.claim_job(session, job_id, "dead-worker") is not None
    now = utcnow()
    with sessions.begin() as session:
        session.execute(update(JobTransition).where(JobTransition.job_id == job_id,
                                                    JobTransition.to_value == "running")
                        .values(at=now - timedelta(seconds=ran_s + waited_s)))
        session.execute(update(Job).where(Job.id == job_id).values(
            updated_at=now - timedelta(seconds=waited_s), lease_expires_at=now - timedelta(seconds=0.5)))
    with sessions.begin() as session:
        assert jobs.reap_expired_leases(session) == [job_id]


def test_a_lost_attempt_counts_until_its_last_heartbeat(sessions: sessionmaker[Session], job_id: str) -> None:
    _lost_after(sessions, job_id, ran_s=5, waited_s=25)
    with sessions() as session:
        assert 4.5 < jobs.running_seconds(session, job_id) < 7  # not the 30 s since the claim
        requeue = session.query(JobTransition).filter_by(job_id=job_id, to_value="queued").one()
        assert "last heard of" in requeue.reason and "requeued at" in requeue.reason


def test_waiting_for_the_reaper_does_not_time_the_next_attempt_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'glai.db'}"
    upgrade(url)
    ctx = WorkerContext.from_settings(Settings(data_dir=tmp_path, database_url=url, broker_url="memory://",
                                               heartbeat_interval_s=0.2, worker_lease_s=30),
                                      enqueue=lambda _job_id: None)
    try:
        config = tiny_config(pruning={"enabled": False}, baseline={"enabled": False})
        job_id = insert_digits_job(ctx.sessions, ctx.storage.root, config, time_limit_s=20)
        _lost_after(ctx.sessions, job_id, ran_s=5, waited_s=25)  # 30 s since the claim > 20 s limit
        assert pipeline_runner.execute_job(ctx, job_id) == "succeeded"
        job = job_state(ctx.sessions, job_id)
        assert job.attempts == 2 and job.failure_kind is None
    finally:
        ctx.dispose()
