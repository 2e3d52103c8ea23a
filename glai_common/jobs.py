"""Job repository: the few writes that must stay correct when API, workers and reapers race.

Rules kept here so callers cannot get them wrong:

* Every state change goes through ``glai_common.states.transition`` under a row lock: ``SELECT ... FOR
  UPDATE`` on PostgreSQL; on SQLite a no-op ``UPDATE`` on the row as the transaction's first write, which
  takes SQLite's single write lock before anything is read (so two claimers serialise).
* A job runs under a lease (``lease_owner`` + ``lease_expires_at``). Claiming refuses final jobs and jobs
  whose lease is alive, so a redelivered message never runs a job twice at once; a worker whose lease was
  taken from it finds out on its next heartbeat.
* Functions flush but never commit: the caller owns the transaction (and enqueues only after commit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from glai_common.models import CurvePoint, Job, JobLogLine, JobTransition, utcnow
from glai_common.states import (
    CANCELLED,
    CANCELLING,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    set_phase,
    transition,
)

ACTIVE_STATES = (RUNNING, CANCELLING)


def _now(now: datetime | None) -> datetime:
    return now or utcnow()


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive (they were written as UTC); make them comparable."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def lease_alive(job: Job, now: datetime | None = None) -> bool:
    expires = as_utc(job.lease_expires_at)
    return job.lease_owner is not None and expires is not None and expires > _now(now)


def lock_job(session: Session, job_id: str) -> Job | None:
    """Load ``job_id`` fresh with a write lock held until the caller's transaction ends."""
    if session.get_bind().dialect.name == "sqlite":
        # Taking the write lock first means no other writer can slip in between our read and write.
        session.execute(text("UPDATE jobs SET state = state WHERE id = :id"), {"id": job_id})
        stmt = select(Job).where(Job.id == job_id)
    else:
        stmt = select(Job).where(Job.id == job_id).with_for_update()
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


# --- claim, lease, release ----------------------------------------------------------------------


def claim_job(session: Session, job_id: str, worker_id: str, *, lease_s: float = 60.0,
              max_attempts: int = 3, now: datetime | None = None) -> Job | None:
    """Take ``job_id`` for ``worker_id``: queued -> running with a fresh lease and one more attempt.

    Returns None when the job is missing, final, or held by a live lease (a duplicate delivery). A job
    still marked running whose lease has expired is first reaped (requeued or failed) and then claimed.
    """
    now = _now(now)
    job = lock_job(session, job_id)
    if job is None or job.state in FINAL_STATES or lease_alive(job, now):
        return None
    # A job still active here lost its worker and no reaper has noticed yet: reap it first.
    if job.state in ACTIVE_STATES and _reap_one(session, job, now, max_attempts) is None:
        return None
    if job.state != QUEUED:
        return None
    transition(session, job, RUNNING, reason=f"claimed by {worker_id} (attempt {job.attempts + 1})")
    job.attempts += 1
    job.lease_owner = worker_id
    job.lease_expires_at = now + timedelta(seconds=lease_s)
    session.flush()
    return job


@dataclass(frozen=True)
class Heartbeat:
    """What a worker learns from renewing its lease."""

    cancel_requested: bool
    state: str


def heartbeat(session: Session, job_id: str, worker_id: str, *, lease_s: float = 60.0,
              progress: float | None = None, epoch: int | None = None,
              now: datetime | None = None) -> Heartbeat | None:
    """Renew the lease (and record progress) in one statement; None means the lease is no longer ours."""
    now = _now(now)
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_s), "updated_at": now}
    if progress is not None:
        values["progress"] = min(max(float(progress), 0.0), 1.0)
    if epoch is not None:
        values["epoch"] = int(epoch)
    stmt = (update(Job.__table__)
            .where(Job.id == job_id, Job.lease_owner == worker_id, Job.state.in_(ACTIVE_STATES))
            .values(**values)
            .returning(Job.cancel_requested, Job.state))
    row = session.execute(stmt).first()
    if row is None:
        return None
    return Heartbeat(cancel_requested=bool(row.cancel_requested) or row.state == CANCELLING,
                     state=row.state)


renew_lease = heartbeat


def read_cancel_flag(session: Session, job_id: str) -> bool:
    row = session.execute(select(Job.cancel_requested, Job.state).where(Job.id == job_id)).first()
    return row is not None and (bool(row.cancel_requested) or row.state == CANCELLING)


def release(session: Session, job_id: str, worker_id: str, now: datetime | None = None) -> bool:
    """Give up a lease without finishing (e.g. the worker is stopping): expire it so a reaper picks the
    job up at once. Returns whether we still held it."""
    stmt = (update(Job.__table__)
            .where(Job.id == job_id, Job.lease_owner == worker_id, Job.state.in_(ACTIVE_STATES))
            .values(lease_expires_at=_now(now)))
    return session.execute(stmt).rowcount == 1


def _owned(job: Job | None, worker_id: str) -> bool:
    return job is not None and job.state in ACTIVE_STATES and job.lease_owner == worker_id


# --- progress: phase, curves, log -----------------------------------------------------------------


def record_phase(session: Session, job_id: str, worker_id: str, phase: str, reason: str = "") -> bool:
    """Phase change (a transition row) with progress reset; refused when the lease is not ours."""
    job = lock_job(session, job_id)
    if not _owned(job, worker_id):
        return False
    assert job is not None
    if job.phase != phase:
        set_phase(session, job, phase, reason)
        job.progress = 0.0
        job.epoch = None
    session.flush()
    return True


def record_progress(session: Session, job_id: str, worker_id: str, *, progress: float,
                    epoch: int | None = None, lease_s: float = 60.0) -> Heartbeat | None:
    """Progress and heartbeat travel together: one round trip."""
    return heartbeat(session, job_id, worker_id, lease_s=lease_s, progress=progress, epoch=epoch)


@dataclass(frozen=True)
class Point:
    series: str
    phase: str
    step: int
    value: float
    wall_time: float


def dialect_insert(session: Session) -> Any:
    """The dialect's INSERT, which offers ``on_conflict_do_nothing`` on both PostgreSQL and SQLite."""
    return sqlite.insert if session.get_bind().dialect.name == "sqlite" else postgresql.insert


def append_curve_points(session: Session, job_id: str,
                        points: Iterable[Point | Mapping[str, Any]]) -> int:
    """Insert a batch; points already present (same job, series, phase, step) are kept as they were, so
    a resumed phase or a retried flush rewrites nothing. Non-finite values are dropped (JSON has none).
    Returns how many rows the batch offered after filtering."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str, int]] = set()
    for point in points:
        p = point if isinstance(point, Point) else Point(**point)
        key = (p.series, p.phase, int(p.step))
        if key in seen or not math.isfinite(p.value):
            continue
        seen.add(key)
        rows.append({"job_id": job_id, "series": p.series, "phase": p.phase, "step": int(p.step),
                     "value": float(p.value), "wall_time": float(p.wall_time)})
    if not rows:
        return 0
    stmt = dialect_insert(session)(CurvePoint.__table__).values(rows).on_conflict_do_nothing(
        index_elements=["job_id", "series", "phase", "step"])
    session.execute(stmt)
    return len(rows)


def append_log(session: Session, job_id: str, text_: str) -> int:
    """Append lines; each row's ``end_offset`` is the UTF-8 byte count of the whole log just past it
    (newline included), so readers page with ``end_offset > cursor``. Returns the new end offset."""
    lines = text_.splitlines() or ([text_] if text_ else [])
    if not lines:
        return log_end_offset(session, job_id)
    lock_job(session, job_id)  # one appender at a time per job keeps offsets strictly increasing
    offset = log_end_offset(session, job_id)
    now = utcnow()
    rows = []
    for line in lines:
        offset += len(line.encode("utf-8")) + 1
        rows.append({"job_id": job_id, "end_offset": offset, "text": line, "at": now})
    session.execute(JobLogLine.__table__.insert(), rows)
    return offset


def log_end_offset(session: Session, job_id: str) -> int:
    value = session.scalar(select(func.max(JobLogLine.end_offset)).where(JobLogLine.job_id == job_id))
    return int(value or 0)


def read_log(session: Session, job_id: str, after: int = 0, limit: int = 1000) -> list[JobLogLine]:
    stmt = (select(JobLogLine).where(JobLogLine.job_id == job_id, JobLogLine.end_offset > after)
            .order_by(JobLogLine.end_offset).limit(limit))
    return list(session.scalars(stmt))


# --- the end of a job ----------------------------------------------------------------------------


def finish(session: Session, job_id: str, worker_id: str, state: str, *, reason: str = "",
           failure_kind: str | None = None, summary: dict[str, Any] | None = None) -> bool:
    """Final state exactly once, only by the lease holder. Returns False (and changes nothing) when the
    job is already final or the lease was taken over."""
    if state not in FINAL_STATES:
        raise ValueError(f"{state!r} is not a final state")
    job = lock_job(session, job_id)
    if not _owned(job, worker_id):
        return False
    assert job is not None
    if state == SUCCEEDED:
        job.progress = 1.0
    if summary is not None:
        job.summary = summary
    transition(session, job, state, reason=reason, failure_kind=failure_kind if state == FAILED else None)
    session.flush()
    return True


def request_cancel(session: Session, job: Job | str, reason: str = "cancel requested") -> Job | None:
    """queued -> cancelled at once; running -> cancelling (the worker stops at its next step);
    cancelling or final -> unchanged. Returns the (refreshed) job."""
    job_id = job if isinstance(job, str) else job.id
    locked = lock_job(session, job_id)
    if locked is None:
        return None
    if locked.state == QUEUED:
        locked.cancel_requested = True
        transition(session, locked, CANCELLED, reason=reason)
    elif locked.state == RUNNING:
        locked.cancel_requested = True
        transition(session, locked, CANCELLING, reason=reason)
    session.flush()
    return locked


# --- lost workers --------------------------------------------------------------------------------


def last_heard_of(job: Job, now: datetime) -> datetime:
    """When the attempt holding ``job`` last showed it was alive: ``updated_at`` moves with every heartbeat,
    phase change and release (and with the claim itself), and nothing else writes a running job's row."""
    seen = as_utc(job.updated_at)
    return now if seen is None else min(seen, now)


def _reap_one(session: Session, job: Job, now: datetime, max_attempts: int) -> str | None:
    """Decide the fate of one locked job whose lease expired. Returns its id if it should be requeued.

    A requeued attempt is recorded as ending when its worker was last heard of: the lease running out
    and the reaper's next pass are waiting, not running, and must not count against ``time_limit_s``."""
    expired = as_utc(job.lease_expires_at)
    seen = last_heard_of(job, now)
    lost = (f"worker {job.lease_owner} lost (last heard of {seen.isoformat()}, lease expired "
            f"{expired.isoformat() if expired else 'never set'})")
    job.lease_owner = None
    job.lease_expires_at = None
    if job.state == CANCELLING:
        transition(session, job, CANCELLED, reason=f"{lost} while cancelling")
        return None
    if job.attempts < max_attempts:
        transition(session, job, QUEUED, at=seen,
                   reason=f"{lost}; requeued at {now.isoformat()} (attempt {job.attempts} of {max_attempts} "
                          "used)")
        return job.id
    transition(session, job, FAILED, reason=f"{lost}; gave up after {job.attempts} attempts",
               failure_kind="worker_lost")
    return None


def reap_expired_leases(session: Session, now: datetime | None = None, max_attempts: int = 3,
                        limit: int = 100) -> list[str]:
    """Requeue (or fail as worker_lost) running jobs whose lease expired; cancelling ones become
    cancelled. Returns the ids to enqueue once the caller has committed. Safe to run in many workers at
    once: rows are locked (PostgreSQL skips rows another reaper holds) and re-checked under the lock."""
    now = _now(now)
    stale = (Job.state.in_(ACTIVE_STATES), Job.lease_expires_at.is_not(None), Job.lease_expires_at < now)
    if session.get_bind().dialect.name == "sqlite":
        ids = list(session.scalars(select(Job.id).where(*stale).limit(limit)))
        jobs = [job for job_id in ids if (job := lock_job(session, job_id)) is not None]
    else:
        stmt = (select(Job).where(*stale).order_by(Job.lease_expires_at).limit(limit)
                .with_for_update(skip_locked=True).execution_options(populate_existing=True))
        jobs = list(session.scalars(stmt))
    requeue: list[str] = []
    for job in jobs:
        if job.state not in ACTIVE_STATES or lease_alive(job, now):
            continue  # changed between the scan and the lock
        job_id = _reap_one(session, job, now, max_attempts)
        if job_id is not None:
            requeue.append(job_id)
    session.flush()
    return requeue


# --- lost messages -------------------------------------------------------------------------------


def stale_queued_jobs(session: Session, older_than_s: float, now: datetime | None = None,
                      limit: int = 100) -> list[str]:
    """Queued jobs untouched for ``older_than_s``: their message may be lost (the API died between
    commit and send, or the broker restarted without persistence). ``updated_at`` moves on every
    requeue and every re-send (``mark_resent``), so one job is re-sent at most once per grace period."""
    cutoff = _now(now) - timedelta(seconds=older_than_s)
    stmt = (select(Job.id).where(Job.state == QUEUED, Job.updated_at < cutoff)
            .order_by(Job.updated_at).limit(limit))
    return list(session.scalars(stmt))


def count_queued(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(Job.state == QUEUED)) or 0)


def take_resend(session: Session, job_id: str, older_than_s: float, now: datetime | None = None
                ) -> datetime | None:
    """Claim the right to re-send one stale queued job: restarts its grace period in one conditional
    statement, so of several reapers only one sends it. Returns the previous ``updated_at`` (to hand
    back with ``return_resend`` if the send fails), or None when the job was claimed, cancelled or
    re-sent meanwhile."""
    now = _now(now)
    stmt = (select(Job.updated_at).where(Job.id == job_id, Job.state == QUEUED,
                                         Job.updated_at < now - timedelta(seconds=older_than_s)))
    previous = session.scalar(stmt)
    if previous is None:
        return None
    taken = (update(Job.__table__)
             .where(Job.id == job_id, Job.state == QUEUED, Job.updated_at == previous)
             .values(updated_at=now))
    return previous if session.execute(taken).rowcount == 1 else None


def return_resend(session: Session, job_id: str, previous: datetime) -> None:
    """The send failed: make the job stale again so the next pass retries it."""
    session.execute(update(Job.__table__).where(Job.id == job_id, Job.state == QUEUED)
                    .values(updated_at=previous))


# --- resuming a failed job ----------------------------------------------------------------------

RESUMED = "resumed by its owner"


class ResumeRefused(Exception):
    """The job cannot be resumed; the message says why (state, failure kind or attempts)."""


def resume_job(session: Session, job_id: str, *, max_attempts: int, time_limit_s: int | None = None) -> Job:
    """failed -> queued, to continue from its checkpoints (kept for failed jobs) on the next attempt.

    Allowed for a failed job whose request was not the problem (not ``user_error``) and that has attempts
    left. Its failure, partial summary and finish time are cleared; ``time_limit_s`` (default: its own
    limit) is the running time it gets from now on: ``running_seconds`` counts from the resume. The
    caller commits, then enqueues."""
    job = lock_job(session, job_id)
    if job is None:
        raise ResumeRefused(f"job '{job_id}' not found")
    if job.state != FAILED:
        raise ResumeRefused(f"job '{job_id}' is {job.state}; only a failed (e.g. timed-out) job can be "
                            "resumed")
    if job.failure_kind == "user_error":
        raise ResumeRefused(f"job '{job_id}' failed because of its request ({job.failure_message}); fix it "
                            "and submit a new job")
    if job.attempts >= max_attempts:
        raise ResumeRefused(f"job '{job_id}' has used all {max_attempts} of its attempts "
                            "(GLAI_MAX_JOB_ATTEMPTS)")
    kind = job.failure_kind
    transition(session, job, QUEUED, reason=f"{RESUMED} after failing ({kind}); attempt {job.attempts + 1} "
                                            f"of {max_attempts} next")
    job.failure_kind = job.failure_message = None
    job.finished_at = None
    job.summary = {}
    job.cancel_requested = False
    if time_limit_s is not None:
        job.time_limit_s = time_limit_s
    session.flush()
    return job


# --- time spent ----------------------------------------------------------------------------------


def running_seconds(session: Session, job_id: str) -> float:
    """Seconds the job spent in running/cancelling over its *closed* attempts, from the transitions.

    The current attempt (an interval still open) is not counted: the worker adds its own clock. An
    attempt lost with its worker counts up to its last heartbeat (``_reap_one``), so neither the wait for
    its lease to expire nor the time queued for the next worker is charged. Only attempts since the job
    was last resumed (``resume_job``) count.
    """
    rows = session.execute(select(JobTransition.from_value, JobTransition.to_value, JobTransition.at)
                           .where(JobTransition.job_id == job_id, JobTransition.field == "state")
                           .order_by(JobTransition.id)).all()
    total = 0.0
    started: datetime | None = None
    for row in rows:
        if row.from_value == FAILED and row.to_value == QUEUED:  # resumed: a fresh time limit from here
            total, started = 0.0, None
            continue
        active_before, active_after = row.from_value in ACTIVE_STATES, row.to_value in ACTIVE_STATES
        if active_after and not active_before:
            started = as_utc(row.at)
        elif active_before and not active_after and started is not None:
            at = as_utc(row.at)
            assert at is not None
            total += max(0.0, (at - started).total_seconds())
            started = None
    return total
