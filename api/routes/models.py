"""/v1/models: operations on trained models across jobs (merging copies of one structure)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from api.deps import DbDep, OwnerDep, ServicesDep
from api.routes.common import errors
from api.routes.jobs import accepted
from api.schemas import JobOut, MergeCreate
from api.services import merge

router = APIRouter(prefix="/models", tags=["models"])


@router.post("/merge", status_code=202, response_model=JobOut, summary="Merge jobs that share one structure",
             responses={200: {"model": JobOut,
                              "description": "Replay of an Idempotency-Key: the original merge "
                              "job, nothing new runs."},
                        202: {"description": "Accepted: the merge job is stored (queued) and sent to the "
                                             "workers."},
                        **errors(404, 409, 422, 503)})
def merge_models(body: MergeCreate, response: Response, services: ServicesDep, db: DbDep, owner: OwnerDep,
                 idempotency_key: Annotated[str | None, Header(
                     min_length=1, max_length=256, pattern=r"^[\x20-\x7e]+$",
                     description="As for `POST /v1/jobs`: the same key and body return the same job.")
                 ] = None,
                 ) -> JobOut:
    """Starts a job that fits the model of all the given jobs' data on their shared frozen structure: from
    their summed sufficient statistics where every job kept them (exactly the closed-form fit of the union
    of their rows), otherwise by phase 2 on the union of their rows, as `summary.merge` then says. The
    merged model is scored on each job's validation rows (`summary.merge.parts`). Poll the job; its
    `trained` artifact is the merged model."""
    job, created = merge.submit(db, services.settings, owner, body, idempotency_key)
    return accepted(db, services, response, job, created)
