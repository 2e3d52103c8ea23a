"""The job state machine: one table of allowed transitions, enforced here and nowhere else.

Every change is recorded as a ``JobTransition`` row (time, from, to, reason).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from glai_common.models import Job, JobTransition, utcnow

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

ALLOWED: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLING, QUEUED}),  # -> queued: requeued after a lost worker
    CANCELLING: frozenset({CANCELLED, SUCCEEDED, FAILED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset({QUEUED}),  # resumed by its owner (glai_common.jobs.resume_job), within its attempts
    CANCELLED: frozenset(),
}

PHASES = ("embedding", "structural", "quantitative", "pruning", "baseline", "exporting")
FAILURE_KINDS = ("user_error", "gpu_oom", "timeout", "worker_lost", "internal")


class InvalidTransition(Exception):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a job in state '{current}' cannot become '{target}'")
        self.current, self.target = current, target


def can_transition(current: str, target: str) -> bool:
    return target in ALLOWED[current]


def transition(session: Session, job: Job, target: str, reason: str = "",
               failure_kind: str | None = None, at: datetime | None = None) -> None:
    """Move ``job`` to ``target`` and record it; the caller commits (ideally with a row lock held).

    ``at``: when the change really happened, if earlier than now (a lost worker's attempt ended at its
    last heartbeat, not when a reaper noticed)."""
    if not can_transition(job.state, target):
        raise InvalidTransition(job.state, target)
    if failure_kind is not None and failure_kind not in FAILURE_KINDS:
        raise ValueError(f"unknown failure kind {failure_kind!r}")
    now = at or utcnow()
    session.add(JobTransition(job_id=job.id, field="state", from_value=job.state, to_value=target,
                              reason=reason, at=now))
    job.state = target
    if target == RUNNING and job.started_at is None:
        job.started_at = now
    if target in FINAL_STATES:
        job.finished_at = now
        job.lease_owner = None
        job.lease_expires_at = None
    if target == FAILED:
        job.failure_kind = failure_kind or "internal"
        job.failure_message = reason
    if target in FINAL_STATES:  # in this same transaction: a final state never goes unannounced
        from glai_common import metrics_store
        from glai_common.webhooks import record_final

        record_final(session, job)
        if job.started_at is not None:  # it ran: from its first start to now
            started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
            metrics_store.observe(session, metrics_store.JOB, target, (now - started).total_seconds())


def set_phase(session: Session, job: Job, phase: str, reason: str = "") -> None:
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    if job.phase == phase:
        return
    session.add(JobTransition(job_id=job.id, field="phase", from_value=job.phase, to_value=phase,
                              reason=reason))
    job.phase = phase
