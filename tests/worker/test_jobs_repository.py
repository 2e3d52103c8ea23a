"""The jobs repository on real PostgreSQL and on SQLite, schema from the migrations."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from glai_common import jobs
from glai_common.models import CurvePoint, Job, JobTransition, utcnow
from glai_common.states import InvalidTransition, transition


def _state_trail(session: Session, job_id: str) -> list[tuple[str | None, str]]:
    rows = session.scalars(select(JobTransition).where(JobTransition.job_id == job_id,
                                                       JobTransition.field == "state")
                           .order_by(JobTransition.id))
    return [(row.from_value, row.to_value) for row in rows]


def test_claim_is_exclusive_under_a_race(sessions: sessionmaker[Session], job_id: str) -> None:
    barrier = threading.Barrier(4)
    results: dict[str, bool] = {}

    def claimer(name: str) -> None:
        with sessions() as session:
            barrier.wait()
            job = jobs.claim_job(session, job_id, name)
            session.commit()
            results[name] = job is not None

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results.values()) == [False, False, False, True]
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "running" and job.attempts == 1
        assert results[job.lease_owner]
        assert _state_trail(session, job_id) == [("queued", "running")]


def test_claim_refuses_live_lease_and_final_jobs(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        assert jobs.claim_job(session, job_id, "w1") is not None
    with sessions.begin() as session:  # a redelivered message while w1 still runs it
        assert jobs.claim_job(session, job_id, "w2") is None
    with sessions.begin() as session:
        assert jobs.finish(session, job_id, "w1", "succeeded", summary={"glai_accuracy": 1.0})
    with sessions.begin() as session:
        assert jobs.claim_job(session, job_id, "w2") is None
        assert jobs.claim_job(session, "missing", "w2") is None


def test_claim_takes_over_an_expired_lease(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        jobs.claim_job(session, job_id, "dead", lease_s=1)
    later = utcnow() + timedelta(seconds=5)
    with sessions.begin() as session:
        job = jobs.claim_job(session, job_id, "w2", now=later)
        assert job is not None and job.lease_owner == "w2" and job.attempts == 2
    with sessions() as session:
        assert _state_trail(session, job_id) == [("queued", "running"), ("running", "queued"),
                                                 ("queued", "running")]


def test_heartbeat_renews_reports_cancel_and_detects_lost_lease(sessions: sessionmaker[Session],
                                                                job_id: str) -> None:
    with sessions.begin() as session:
        jobs.claim_job(session, job_id, "w1", lease_s=1)
    with sessions.begin() as session:
        beat = jobs.heartbeat(session, job_id, "w1", lease_s=120, progress=0.25, epoch=3)
        assert beat is not None and not beat.cancel_requested
        assert jobs.heartbeat(session, job_id, "intruder") is None
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.progress == 0.25 and job.epoch == 3
        assert jobs.as_utc(job.lease_expires_at) > utcnow() + timedelta(seconds=60)
    with sessions.begin() as session:
        jobs.request_cancel(session, job_id)
    with sessions.begin() as session:
        beat = jobs.heartbeat(session, job_id, "w1")
        assert beat is not None and beat.cancel_requested and beat.state == "cancelling"
        assert jobs.read_cancel_flag(session, job_id)


def test_curve_points_are_idempotent(sessions: sessionmaker[Session], job_id: str) -> None:
    batch = [{"series": "train_loss", "phase": "structural", "step": s, "value": 1.0 / (s + 1),
              "wall_time": 0.1 * s} for s in range(5)]
    with sessions.begin() as session:
        assert jobs.append_curve_points(session, job_id, batch) == 5
    replay = [*batch[2:], {"series": "train_loss", "phase": "structural", "step": 5, "value": 9.0,
                           "wall_time": 1.0},
              jobs.Point("train_loss", "structural", 0, 123.0, 0.0),  # never overwrites
              jobs.Point("val_loss", "structural", 0, float("nan"), 0.0)]  # dropped
    with sessions.begin() as session:
        jobs.append_curve_points(session, job_id, replay)
        jobs.append_curve_points(session, job_id, [])
    with sessions() as session:
        rows = session.execute(select(CurvePoint.step, CurvePoint.value).where(CurvePoint.job_id == job_id)
                               .order_by(CurvePoint.step)).all()
        assert [r.step for r in rows] == [0, 1, 2, 3, 4, 5]
        assert rows[0].value == 1.0


def test_log_cursor_counts_utf8_bytes(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        assert jobs.append_log(session, job_id, "a\nbé") == 2 + 4
        assert jobs.append_log(session, job_id, "third line\n") == 6 + 11
        assert jobs.append_log(session, job_id, "") == 17
    with sessions() as session:
        assert [(r.end_offset, r.text) for r in jobs.read_log(session, job_id)] == [
            (2, "a"), (6, "bé"), (17, "third line")]
        assert [r.text for r in jobs.read_log(session, job_id, after=2)] == ["bé", "third line"]
        assert jobs.read_log(session, job_id, after=17) == []


@pytest.mark.parametrize("start, expected, flag", [
    ("queued", "cancelled", True),
    ("running", "cancelling", True),
    ("cancelling", "cancelling", True),
    ("succeeded", "succeeded", False),
    ("failed", "failed", False),
])
def test_cancel_semantics(sessions: sessionmaker[Session], job_id: str, start: str, expected: str,
                          flag: bool) -> None:
    with sessions.begin() as session:
        if start != "queued":
            jobs.claim_job(session, job_id, "w1")
        if start == "cancelling":
            jobs.request_cancel(session, job_id)
        if start in {"succeeded", "failed"}:
            jobs.finish(session, job_id, "w1", start, failure_kind="internal" if start == "failed" else None)
    with sessions.begin() as session:
        job = jobs.request_cancel(session, session.get(Job, job_id))  # type: ignore[arg-type]
        assert job is not None and job.state == expected and job.cancel_requested is flag
    with sessions() as session:
        trail = _state_trail(session, job_id)
        assert len(trail) == len({t for t in trail})  # nothing recorded twice


def test_reaper_requeues_then_fails_as_worker_lost(sessions: sessionmaker[Session], job_id: str) -> None:
    for attempt in (1, 2, 3):
        with sessions.begin() as session:
            job = jobs.claim_job(session, job_id, f"w{attempt}", lease_s=1)
            assert job is not None and job.attempts == attempt
        with sessions.begin() as session:  # lease still alive: nothing to reap
            assert jobs.reap_expired_leases(session, max_attempts=3) == []
        with sessions.begin() as session:
            requeue = jobs.reap_expired_leases(session, now=utcnow() + timedelta(seconds=5), max_attempts=3)
        with sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            if attempt < 3:
                assert requeue == [job_id] and job.state == "queued" and job.lease_owner is None
            else:
                assert requeue == [] and job.state == "failed" and job.failure_kind == "worker_lost"
    with sessions.begin() as session:  # the late heartbeat of a lost worker changes nothing
        assert jobs.heartbeat(session, job_id, "w3") is None
        assert not jobs.finish(session, job_id, "w3", "succeeded")


def test_reaper_turns_an_abandoned_cancel_into_cancelled(sessions: sessionmaker[Session],
                                                         job_id: str) -> None:
    with sessions.begin() as session:
        jobs.claim_job(session, job_id, "w1", lease_s=1)
        jobs.request_cancel(session, job_id)
    with sessions.begin() as session:
        assert jobs.reap_expired_leases(session, now=utcnow() + timedelta(seconds=5)) == []
    with sessions() as session:
        assert session.scalar(select(Job.state).where(Job.id == job_id)) == "cancelled"


def test_finish_exactly_once_and_only_by_the_holder(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        jobs.claim_job(session, job_id, "w1")
        assert not jobs.finish(session, job_id, "other", "succeeded")
        assert jobs.record_phase(session, job_id, "w1", "structural")
        assert not jobs.record_phase(session, job_id, "other", "pruning")
    with sessions.begin() as session:
        assert jobs.finish(session, job_id, "w1", "failed", reason="boom", failure_kind="gpu_oom")
    with sessions.begin() as session:
        assert not jobs.finish(session, job_id, "w1", "succeeded")
        with pytest.raises(ValueError):
            jobs.finish(session, job_id, "w1", "running")
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "failed" and job.failure_kind == "gpu_oom"
        assert job.failure_message == "boom" and job.lease_owner is None and job.finished_at is not None
        assert session.scalar(select(func.count()).select_from(JobTransition)
                              .where(JobTransition.job_id == job_id, JobTransition.field == "phase")) == 1


def test_state_machine_refuses_illegal_transitions(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for target in ("succeeded", "cancelling", "queued"):
            with pytest.raises(InvalidTransition):
                transition(session, job, target)
        transition(session, job, "cancelled")
        for target in ("running", "queued", "failed", "succeeded", "cancelled"):
            with pytest.raises(InvalidTransition):
                transition(session, job, target)
    with sessions.begin() as session:
        assert jobs.claim_job(session, job_id, "w1") is None


def test_release_expires_the_lease_for_the_reaper(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        jobs.claim_job(session, job_id, "w1", lease_s=600)
        assert not jobs.release(session, job_id, "other")
        assert jobs.release(session, job_id, "w1")
    with sessions.begin() as session:
        assert jobs.reap_expired_leases(session, now=utcnow() + timedelta(seconds=1)) == [job_id]
