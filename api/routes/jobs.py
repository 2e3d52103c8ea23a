"""/v1/jobs: submit (idempotent), list, read, cancel, delete."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import AfterValidator, BeforeValidator
from sqlalchemy.orm import Session

from api.deps import BearerDep, DbDep, OwnerDep, Services, ServicesDep, local_owner, presented_key, refuse_key
from api.errors import not_found
from api.presenters import job_brief, job_out
from api.routes.common import errors
from api.schemas import JobCreate, JobList, JobOut, JobResume, JobStatus
from api.services import api_keys, job_status, jobs, resume
from glai_common.models import Job
from glai_common.states import STATES

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _not_a_number(value: object) -> object:
    """Pydantic would read `1.5e9` as a Unix time; the documented format is ISO-8601 only."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("use an ISO-8601 date-time such as 2024-05-01T12:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    """Convert here, where a failure is a 422: year-1 or year-9999 times with an offset overflow."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("date-time is out of range") from exc


IsoDateTime = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_in_utc)]


@router.post("", status_code=202, response_model=JobOut, summary="Submit a training job",
             responses={200: {"model": JobOut, "description": "Replay: this Idempotency-Key was already "
                              "used with the same request; the original job is returned, nothing new runs."},
                        202: {"description": "Accepted: the job is stored (queued) and sent to the workers."},
                        **errors(404, 409, 422, 503)})
def submit_job(body: JobCreate, response: Response, services: ServicesDep, db: DbDep, owner: OwnerDep,
               idempotency_key: Annotated[str | None, Header(
                   min_length=1, max_length=256, pattern=r"^[\x20-\x7e]+$",
                   description="Any unique string (e.g. a UUID): printable ASCII, 1-256 characters, scoped "
                   "to your owner. Retrying with the same key and the same body returns the same job (200); "
                   "the same key with a different body is a 409.")] = None) -> JobOut:
    """Validates the request against the deployment's limits, commits the job (state `queued`), then
    sends it to the workers. Poll `GET /v1/jobs/{id}` for progress."""
    job, created = jobs.submit(db, services.settings, owner, body, idempotency_key)
    return accepted(db, services, response, job, created)


def accepted(db: Session, services: Services, response: Response, job: Job, created: bool) -> JobOut:
    """A new job is sent to the workers (after its commit) and answered 202; a replayed Idempotency-Key
    gets the original job with 200. Either way ``Location`` points at it."""
    if created:
        jobs.enqueue_or_fail(db, services.enqueue, job)
    else:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(job)


@router.get("", response_model=JobList, summary="List your jobs, newest first", responses=errors(422))
def list_jobs(
    db: DbDep, owner: OwnerDep,
    state: Annotated[str | None, Query(pattern=f"^({'|'.join(STATES)})$",
                                       description="Only jobs in this state.")] = None,
    created_after: Annotated[IsoDateTime | None, Query(description="Only jobs created after (ISO-8601).")
                             ] = None,
    created_before: Annotated[IsoDateTime | None, Query(description="Only jobs created before (ISO-8601).")
                              ] = None,
    dataset_id: Annotated[str | None, Query(pattern="^[0-9a-f]{32}$",
                                            description="Only jobs on this dataset (its id).")] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=256,
                                      description="Only jobs with exactly this name.")] = None,
    parent_job_id: Annotated[str | None, Query(pattern="^[0-9a-f]{32}$",
                                               description="Only the children of this job (incremental "
                                               "jobs that continue it).")] = None,
    tag: Annotated[list[str] | None, Query(description="Only jobs with this tag (exactly); repeat it for "
                                           "jobs with every one of several (at most 8).")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> JobList:
    """Filters combine (all must hold); a page is `limit` jobs, newest first. Unknown parameters are a 422."""
    rows, next_cursor = jobs.list_owned(db, owner, state=state, created_after=created_after,
                                        created_before=created_before, dataset_id=dataset_id, name=name,
                                        parent_job_id=parent_job_id, tags=tag, limit=limit, cursor=cursor)
    return JobList(items=[job_brief(r) for r in rows], next_cursor=next_cursor)


IfNoneMatch = Annotated[str | None, Header(max_length=1024, description="An `ETag` this job sent before: "
                                            "304 with no body while it still holds.")]
NOT_MODIFIED = {304: {"description": "Not modified: the `If-None-Match` tag still holds (no body)."}}


def _tagged(body: bytes, tag: str, if_none_match: str | None) -> Response:
    """304 when the client's tag still holds, else the body; no-cache: revalidate on every poll."""
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if job_status.matches(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.get("/{job_id}", response_model=JobOut, summary="Get a job",
            responses={**NOT_MODIFIED, **errors(404)})
def get_job(job_id: str, db: DbDep, owner: OwnerDep, if_none_match: IfNoneMatch = None) -> Response:
    """Everything about the job. Its `ETag` changes with any part of it; send it back as `If-None-Match`
    to get a 304 while nothing changed. To poll progress, `GET /v1/jobs/{job_id}/status` is lighter."""
    body = job_out(jobs.get_owned(db, owner, job_id)).model_dump_json().encode()
    return _tagged(body, job_status.body_etag(body), if_none_match)


@router.get("/{job_id}/status", response_model=JobStatus, summary="Poll a job's status",
            responses={**NOT_MODIFIED, **errors(404)})
async def get_job_status(job_id: str, request: Request, services: ServicesDep, credentials: BearerDep,
                         if_none_match: IfNoneMatch = None) -> Response:
    """State, phase, progress and times only: no spec, history, summary or artifacts. One database read
    (the API key is checked in the same statement, so a revoked key fails at once), with a weak `ETag`:
    poll with `If-None-Match` and get 304 until something moves."""
    row = await anyio.to_thread.run_sync(partial(_status_row, request, services, credentials, job_id))
    body = JobStatus.model_validate(row).model_dump_json().encode()
    return _tagged(body, job_status.etag(row), if_none_match)


def _status_row(request: Request, services: Services, credentials: HTTPAuthorizationCredentials | None,
                job_id: str) -> dict[str, Any]:
    auth = services.settings.auth_enabled
    owner = None if auth else local_owner(request)
    key = presented_key(request, services, credentials) if auth else ""
    engine = services.read_engine or services.engine
    if owner is not None:
        row = job_status.read(engine, lambda c: job_status.read_by_owner(c, owner, job_id)) \
            if jobs.looks_like_id(job_id) else None
    else:
        row = job_status.read(engine, lambda c: job_status.read_by_key(c, api_keys.hash_key(key), job_id)) \
            if jobs.looks_like_id(job_id) and api_keys.well_formed(key) else None
        if row is None:
            with services.sessions() as db:
                if api_keys.owner_for_key(db, key) is None:  # a bad key, not a missing job
                    refuse_key(request, services)
    if row is None:
        raise not_found("job", job_id)
    return row


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job", responses=errors(404))
def cancel_job(job_id: str, db: DbDep, owner: OwnerDep) -> JobOut:
    """Queued: cancelled at once. Running: `cancelling` until the worker stops at its next step.
    Already finished: unchanged. Always 200 with the job."""
    return job_out(jobs.cancel(db, owner, job_id))


@router.post("/{job_id}/resume", status_code=202, response_model=JobOut, summary="Resume a failed job",
             responses=errors(404, 409, 422, 503))
def resume_job(job_id: str, services: ServicesDep, db: DbDep, owner: OwnerDep,
               body: JobResume | None = None) -> JobOut:
    """A failed job (e.g. `timeout`) that has attempts left goes back to `queued` and continues from its
    checkpoints, which are kept for failed jobs (a succeeded or cancelled job's are removed). Its time
    limit counts again from now (`time_limit_s` to change it). 409 for any other state, for a
    `user_error` (fix the request and submit a new job) and once `GLAI_MAX_JOB_ATTEMPTS` are used."""
    return job_out(resume.resume(db, services.settings, services.enqueue, owner, job_id,
                                 body or JobResume()))


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job", responses=errors(404, 409))
def delete_job(job_id: str, services: ServicesDep, db: DbDep, owner: OwnerDep) -> Response:
    """Only succeeded, failed or cancelled jobs; removes its curves, logs and artifact files."""
    jobs.delete(db, services.storage, owner, job_id)
    services.model_cache.discard_prefix(f"jobs/{job_id}/")  # its models no longer take memory here
    return Response(status_code=204)
