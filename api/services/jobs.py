"""Jobs: validate a request against the deployment's limits, store it (state row + first transition +
idempotency key in one commit), enqueue after the commit, read, cancel and delete.

State changes go through ``glai_common.jobs`` / ``glai_common.states``; nothing here writes ``state``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, cast, exists, func, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import ApiError, not_found
from api.schemas import JobCreate
from api.services import datasets, limits, lineage, routing
from api.services.pagination import as_utc, page, split_page
from glai_common import jobs as job_repo
from glai_common import webhooks
from glai_common.models import Dataset, IdempotencyKey, Job, JobTransition, new_id
from glai_common.settings import Settings
from glai_common.states import FAILED, FINAL_STATES, QUEUED, STATES, transition
from glai_common.storage import Storage
from glai_core.config import TrainConfig
from glai_core.defaults import AUTO_FIELDS

log = logging.getLogger("glai.api")


def _library(name: str, section: dict[str, Any]) -> dict[str, Any]:
    """API "auto" -> the library's None: chosen from the data when the job runs (glai_core.defaults)."""
    auto = AUTO_FIELDS[name]
    return {key: None if key in auto and value == "auto" else value for key, value in section.items()}


def build_spec(body: JobCreate, settings: Settings) -> tuple[dict[str, Any], int]:
    """The stored spec (contract: config + backbone + validation_fraction) and the resolved time limit."""
    r = body.architecture.reduction_factor
    config = TrainConfig.from_dict({
        "architecture": {"hidden": list(body.architecture.hidden),
                         "reduction_factor": None if r == "auto" else r if r == "adaptive" else float(r)},
        "structural": _library("structural", body.structural.model_dump()),
        "quantitative": _library("quantitative", body.quantitative.model_dump()),
        "pruning": body.pruning.model_dump(), "baseline": _library("baseline", body.baseline.model_dump()),
        "seed": body.seed,
        "precision": body.precision,
    })
    spec = {"config": config.to_dict(), "backbone": body.backbone,
            "validation_fraction": body.validation_fraction, **lineage.request_fields(body)}
    # a deployment may lower the maximum below the default: the default must never be refused
    default = min(settings.default_job_time_limit_s, settings.max_job_time_limit_s)
    return spec, body.time_limit_s or default


def request_hash(dataset_id: str, spec: dict[str, Any], time_limit_s: int, name: str | None = None,
                 tags: list[str] | None = None, routing: dict[str, Any] | None = None) -> str:
    """Hash of the request's meaning (defaults filled in), so `{}` and the explicit defaults agree. A name,
    tags and routing (queue, priority, webhook) count only when given: keys stored before jobs had them
    still replay."""
    doc: dict[str, Any] = {"dataset_id": dataset_id, "spec": spec, "time_limit_s": time_limit_s}
    if name is not None:
        doc["name"] = name
    if tags:
        doc["tags"] = tags
    if routing:
        doc["routing"] = routing
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_limits(spec: dict[str, Any], time_limit_s: int, dataset: Dataset, settings: Settings) -> None:
    """Deployment limits (``api.services.limits``) for this dataset's shape, each a 422 naming the field.
    With a backbone the job trains on its embeddings, so their width is the ``d`` that counts."""
    from glai_core.backbones import BACKBONES

    d = BACKBONES.get(spec.get("backbone") or "", dataset.n_features)
    limits.check_limits(spec, time_limit_s, d, dataset.n_classes, dataset.n_samples + dataset.n_validation,
                        settings)


def _replay(db: Session, owner: str, key: str, digest: str) -> Job | None:
    row = db.scalar(select(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key))
    if row is None:
        return None
    if row.request_hash != digest:
        raise ApiError(409, f"Idempotency-Key '{key}' was already used with a different request "
                            f"(job {row.job_id}); use a new key for a new job", "Idempotency-Key")
    return db.get(Job, row.job_id)


def submit(db: Session, settings: Settings, owner: str, body: JobCreate,
           idempotency_key: str | None) -> tuple[Job, bool]:
    """Store the job (queued) and return (job, created). A replayed key returns the original job."""
    spec, time_limit_s = build_spec(body, settings)
    digest = request_hash(body.dataset_id, spec, time_limit_s, body.name, body.tags, _routing(body))
    if idempotency_key and (job := _replay(db, owner, idempotency_key, digest)) is not None:
        return job, False

    if not looks_like_id(body.dataset_id):
        raise not_found("dataset", body.dataset_id, "dataset_id")
    dataset = datasets.get_owned(db, owner, body.dataset_id, "dataset_id")
    datasets.check_backbone(dataset, body.backbone)
    spec, parent = lineage.prepare(db, owner, body, dataset, spec, time_limit_s, settings)  # issue 17
    check_limits(spec, time_limit_s, dataset, settings)
    queue = routing.queue_of(body, settings)
    webhook_url = routing.webhook_url_of(body, settings)
    if webhook_url is not None:
        webhooks.secret_for(db, owner)  # the signing key exists before any delivery needs it
    job = Job(id=new_id(), owner=owner, dataset_id=dataset.id, name=body.name, tags=list(body.tags),
              state=QUEUED, spec=spec, time_limit_s=time_limit_s, queue=queue, priority=body.priority,
              parent_job_id=None if parent is None else parent.id,
              webhook_url=webhook_url)
    db.add(job)
    db.add(JobTransition(job_id=job.id, field="state", from_value=None, to_value=QUEUED, reason="submitted"))
    if idempotency_key:
        db.flush()  # the key row has no ORM relationship to order it after the job's insert
        db.add(IdempotencyKey(owner=owner, key=idempotency_key, request_hash=digest, job_id=job.id))
    try:
        db.commit()
    except IntegrityError:
        db.rollback()  # a concurrent request with the same key won the race: answer as a replay
        if idempotency_key and (job := _replay(db, owner, idempotency_key, digest)) is not None:
            return job, False
        raise
    return job, True


def _routing(body: JobCreate) -> dict[str, Any]:
    """The routing fields that were given (not left at their defaults), for the idempotency hash."""
    given: dict[str, Any] = {}
    if body.queue is not None:
        given["queue"] = body.queue
    if body.priority != "normal":
        given["priority"] = body.priority
    if body.notify is not None:
        given["webhook_url"] = body.notify.webhook_url
    return given


def enqueue_or_fail(db: Session, enqueue: Callable[[str], None], job: Job) -> None:
    """Send the committed job to the broker. If the broker is unreachable the job is failed (it would
    never run) and its idempotency key released, so retrying the same request makes a new job."""
    try:
        enqueue(job.id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job.id)
        locked = job_repo.lock_job(db, job.id)
        if locked is not None and locked.state == QUEUED:
            transition(db, locked, FAILED, reason=f"the job queue was unreachable: {exc}",
                       failure_kind="internal")
        db.execute(sql_delete(IdempotencyKey).where(IdempotencyKey.job_id == job.id))
        db.commit()
        raise ApiError(503, "the job queue (broker) is unreachable, so the job could not be started; "
                            "retry later", None, extra={"job_id": job.id}) from exc


def looks_like_id(value: str) -> bool:
    """Ids are uuid4 hex; anything else cannot exist, so it is a 404 without touching the database."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def get_owned(db: Session, owner: str, job_id: str) -> Job:
    """The caller's job, or a 404 identical to a missing one: another owner's id reveals nothing."""
    if not looks_like_id(job_id):
        raise not_found("job", job_id)
    job = db.get(Job, job_id)
    if job is None or job.owner != owner:
        raise not_found("job", job_id)
    return job


MAX_TAG_FILTERS = 8


def has_tag(db: Session, tag: str) -> ColumnElement[bool]:
    """Jobs whose ``tags`` hold ``tag`` exactly: JSON containment on PostgreSQL, ``json_each`` on SQLite."""
    if db.get_bind().dialect.name == "postgresql":
        return cast(Job.tags, JSONB).contains([tag])
    each = func.json_each(Job.tags).table_valued("value")
    return exists(select(1).select_from(each).where(each.c.value == tag))


def list_owned(db: Session, owner: str, *, state: str | None, created_after: datetime | None,
               created_before: datetime | None, limit: int, cursor: str | None,
               dataset_id: str | None = None, name: str | None = None,
               parent_job_id: str | None = None,
               tags: list[str] | None = None) -> tuple[list[Job], str | None]:
    query = select(Job).where(Job.owner == owner)
    if tags:
        if len(tags) > MAX_TAG_FILTERS:
            raise ApiError(422, f"at most {MAX_TAG_FILTERS} tag filters (got {len(tags)})", "tag")
        for tag in dict.fromkeys(tags):
            if not 1 <= len(tag) <= 64:
                raise ApiError(422, "a tag is 1 to 64 characters", "tag")
            query = query.where(has_tag(db, tag))
    if parent_job_id is not None:
        query = query.where(Job.parent_job_id == parent_job_id)
    if dataset_id is not None:
        query = query.where(Job.dataset_id == dataset_id)
    if name is not None:
        query = query.where(Job.name == name)
    if state is not None:
        if state not in STATES:
            raise ApiError(422, f"unknown state '{state}'; one of: {', '.join(STATES)}", "state")
        query = query.where(Job.state == state)
    if created_after is not None:
        query = query.where(Job.created_at > as_utc(created_after))
    if created_before is not None:
        query = query.where(Job.created_at < as_utc(created_before))
    rows = db.scalars(page(query, Job, cursor, limit)).all()
    return split_page(list(rows), limit)


def cancel(db: Session, owner: str, job_id: str) -> Job:
    """queued -> cancelled now; running -> cancelling (the worker stops at its next step); else as is."""
    get_owned(db, owner, job_id)
    job = job_repo.request_cancel(db, job_id, reason="cancelled by the user")
    db.commit()
    assert job is not None
    db.expire(job)  # reload transitions with the new row
    return job


def delete(db: Session, storage: Storage, owner: str, job_id: str) -> None:
    """Only finished jobs; the rows go first, then the files (an orphan file beats a dangling row)."""
    job = get_owned(db, owner, job_id)
    if job.state not in FINAL_STATES:
        raise ApiError(409, f"job '{job_id}' is {job.state}; cancel it and wait until it has finished "
                            "before deleting it", "state")
    child = db.scalar(select(Job.id).where(Job.parent_job_id == job.id, Job.state.not_in(FINAL_STATES)))
    if child is not None:  # it reads this job's model and statistics when it runs
        raise ApiError(409, f"job '{child}' continues job '{job_id}' and has not finished; delete this job "
                            "once it has", "state")
    keys = [artifact.storage_key for artifact in job.artifacts]
    db.delete(job)
    db.commit()
    for key in keys:
        storage.delete_prefix(key)
    storage.delete_prefix(f"jobs/{job_id}")
