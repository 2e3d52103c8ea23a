"""``POST /v1/models/merge``: a job that merges copies of one structure into the model of all their data.

Checked before anything is stored, each a 4xx naming the field: every id one of your succeeded jobs with a
trained model (404/409 ``job_ids[i]``), one structure for all of them, no dataset's rows in two of them,
every part's dataset still there (422/409 ``job_ids``). The merge then runs on a worker like any job (202
and a job body; its summary's ``merge`` says what it did, its ``trained`` artifact is the merged model).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.schemas import MergeCreate
from api.services import jobs, lineage
from glai_common.models import Dataset, IdempotencyKey, Job, JobTransition, new_id
from glai_common.settings import Settings
from glai_common.states import QUEUED


def _sources(db: Session, owner: str, body: MergeCreate) -> list[Job]:
    sources = [lineage.owned_succeeded(db, owner, job_id, f"job_ids[{i}]") for i,
               job_id in enumerate(body.job_ids)]
    structures = {job.id: lineage.structure_of(job) for job in sources}
    if len(set(structures.values())) != 1:
        shown = ", ".join(f"{job_id} on {structure}'s" for job_id, structure in structures.items())
        raise ApiError(422, f"job_ids: the jobs do not share one structure ({shown}): only copies of one "
                            "frozen structure (a job and its children) can be merged", "job_ids")
    seen: dict[str, str] = {}
    for job in sources:
        for part in lineage.parts_of(job):
            key = json.dumps(part, sort_keys=True)
            if key in seen:
                raise ApiError(422, f"job_ids: jobs {seen[key]} and {job.id} were both fitted on dataset "
                                    f"{part['dataset_id']}'s rows: merging would count them twice (merge "
                                    "copies "
                                    "fitted with incremental.rows 'own')", "job_ids")
            seen[key] = job.id
            if db.get(Dataset, part["dataset_id"]) is None:
                raise ApiError(409, f"job_ids: dataset {part['dataset_id']} of job {job.id} no longer exists",
                               "job_ids")
    return sources


def submit(db: Session, settings: Settings, owner: str, body: MergeCreate,
           idempotency_key: str | None) -> tuple[Job, bool]:
    """Store the merge job (queued) and return (job, created); a replayed key returns the original."""
    sources = _sources(db, owner, body)
    first = sources[0]
    base = first.spec or {}
    spec: dict[str, Any] = {
        "config": base.get("config", {}), "backbone": base.get("backbone"),
        "validation_fraction": base.get("validation_fraction", 0.2),
        "merge": {"job_ids": list(body.job_ids), "method": body.method,
                  "sources": [{"job_id": job.id, "parts": lineage.parts_of(job)} for job in sources]},
        "lineage": {"structure_job_id": lineage.structure_of(first),
                    "parts": [p for job in sources for p in lineage.parts_of(job)]},
    }
    spec["config"] = {**spec["config"], "pruning": {**spec["config"].get("pruning", {}), "enabled": False},
                      "baseline": {**spec["config"].get("baseline", {}), "enabled": False}}
    default = min(settings.default_job_time_limit_s, settings.max_job_time_limit_s)
    time_limit_s = body.time_limit_s or default
    if time_limit_s > settings.max_job_time_limit_s:
        raise ApiError(422, f"time_limit_s: {time_limit_s} s exceeds GLAI_MAX_JOB_TIME_LIMIT_S="
                            f"{settings.max_job_time_limit_s}", "time_limit_s")
    digest = jobs.request_hash(first.dataset_id, {"merge": body.model_dump()}, time_limit_s, body.name)
    if idempotency_key and (job := jobs._replay(db, owner, idempotency_key, digest)) is not None:
        return job, False
    job = Job(id=new_id(), owner=owner, dataset_id=first.dataset_id, name=body.name, tags=["merge"],
              state=QUEUED, spec=spec, time_limit_s=time_limit_s, queue=first.queue, priority="normal")
    db.add(job)
    db.add(JobTransition(job_id=job.id, field="state", from_value=None, to_value=QUEUED,
                         reason=f"merge of {len(sources)} jobs submitted"))
    if idempotency_key:
        db.flush()
        db.add(IdempotencyKey(owner=owner, key=idempotency_key, request_hash=digest, job_id=job.id))
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        if idempotency_key and (job := jobs._replay(db, owner, idempotency_key, digest)) is not None:
            return job, False
        raise
    return job, True
