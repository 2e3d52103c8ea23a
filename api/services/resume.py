"""Resuming a failed job: back to ``queued`` with its checkpoints, sent to the workers after the commit.

The state change and its rules (failed only, not a ``user_error``, attempts left) live in
``glai_common.jobs.resume_job``; here the request is checked against the deployment and the job is
enqueued. A broker that cannot take the message puts the job back to ``failed`` (it could not run),
so the owner can resume it again later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from api.errors import ApiError
from api.schemas import JobResume
from api.services.jobs import get_owned
from glai_common import jobs as job_repo
from glai_common.models import Job
from glai_common.settings import Settings
from glai_common.states import FAILED, QUEUED, transition

log = logging.getLogger("glai.api")


def resume(db: Session, settings: Settings, enqueue: Callable[[str], None], owner: str, job_id: str,
           body: JobResume) -> Job:
    get_owned(db, owner, job_id)
    limit = body.time_limit_s
    if limit is not None and limit > settings.max_job_time_limit_s:
        raise ApiError(422, f"time_limit_s is {limit}, above the limit of {settings.max_job_time_limit_s} s "
                            "(GLAI_MAX_JOB_TIME_LIMIT_S)", "time_limit_s")
    try:
        job = job_repo.resume_job(db, job_id, max_attempts=settings.max_job_attempts, time_limit_s=limit)
    except job_repo.ResumeRefused as exc:
        db.rollback()
        raise ApiError(409, str(exc), "state") from exc
    db.commit()
    try:
        enqueue(job.id)
    except Exception as exc:
        log.exception("could not enqueue resumed job %s", job.id)
        locked = job_repo.lock_job(db, job.id)
        if locked is not None and locked.state == QUEUED:
            transition(db, locked, FAILED, reason=f"the job queue was unreachable: {exc}",
                       failure_kind="internal")
        db.commit()
        raise ApiError(503, "the job queue (broker) is unreachable, so the job could not be resumed; retry "
                            "later", None, extra={"job_id": job.id}) from exc
    db.expire(job)  # reload transitions with the new row
    return job
