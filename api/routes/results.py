"""A job's outputs: curves, logs and artifact files."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import DbDep, OwnerDep, Services, ServicesDep
from api.errors import ApiError
from api.presenters import job_out
from api.routes.common import errors
from api.schemas import ArtifactOut, Curves, LogChunk
from api.services import curves, downloads, jobs, logs
from glai_common.models import Artifact
from glai_common.states import PHASES

router = APIRouter(prefix="/jobs/{job_id}", tags=["results"])


@router.get("/curves", response_model=Curves, summary="Metric curves", responses=errors(404, 422))
def get_curves(
    job_id: str, db: DbDep, owner: OwnerDep,
    keys: Annotated[list[str] | None, Query(description="Metric names, comma-separated or repeated "
                                            "(default: all), e.g. `val_accuracy,train_loss`.")] = None,
    phase: Annotated[str | None, Query(pattern=f"^({'|'.join(PHASES)})$",
                                       description="Only this phase, e.g. `structural`.")] = None,
    max_points: Annotated[int | None, Query(
        ge=2, le=100_000, description="Downsample each series to at most this many points (min/max "
        "buckets; first and last kept).")] = None,
) -> Curves:
    jobs.get_owned(db, owner, job_id)
    wanted = [k.strip() for item in keys or [] for k in item.split(",") if k.strip()] or None
    return Curves.model_validate({"series": curves.read_series(db, job_id, wanted, phase, max_points)})


@router.get("/logs", response_model=LogChunk, summary="Log text after a byte offset", responses=errors(404))
def get_logs(job_id: str, db: DbDep, owner: OwnerDep,
             offset: Annotated[int, Query(ge=0, le=2**62, description="`next_offset` of the previous call "
                                          "(0: from the start).")] = 0) -> LogChunk:
    jobs.get_owned(db, owner, job_id)
    text, next_offset = logs.read_chunk(db, job_id, offset)
    return LogChunk(text=text, next_offset=next_offset)


@router.get("/artifacts", response_model=list[ArtifactOut], summary="List exported models",
            responses=errors(404))
def list_artifacts(job_id: str, db: DbDep, owner: OwnerDep) -> list[ArtifactOut]:
    return job_out(jobs.get_owned(db, owner, job_id)).artifacts


RangeHeader = Annotated[str | None, Header(alias="Range", description="One byte range: `bytes=0-1023`.")]
IfNoneMatch = Annotated[str | None, Header(description="An ETag seen before: 304 if unchanged.")]
IfRange = Annotated[str | None, Header(description="Honour Range only if the ETag still matches.")]
DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The whole file."},
    206: {"description": "The requested byte range."},
    304: {"description": "Not modified (If-None-Match matched the ETag)."},
    **errors(404, 410, 416)}


def _artifact(job_id: str, name: str, services: Services, db: Session, owner: str, range_: str | None,
              if_none_match: str | None, if_range: str | None, *, head: bool) -> Response:
    job = jobs.get_owned(db, owner, job_id)
    artifact = db.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if artifact is None:
        names = ", ".join(a.name for a in job.artifacts) or f"none (the job is {job.state})"
        raise ApiError(404, f"job '{job_id}' has no artifact {name!r}; its artifacts: {names}", "name")
    filename = f"{job_id}-{PurePosixPath(artifact.storage_key).name}"  # -trained.safetensors, -config.json...
    return downloads.artifact_response(services.storage, artifact, filename,
                                       range_, if_none_match, if_range, head=head)


@router.get("/artifacts/{name}", summary="Download an exported model", response_class=Response,
            responses=DOWNLOAD_RESPONSES)
def download_artifact(job_id: str, name: str, services: ServicesDep, db: DbDep, owner: OwnerDep,
                      range_: RangeHeader = None, if_none_match: IfNoneMatch = None,
                      if_range: IfRange = None) -> Response:
    """Streams the file: a model (`.safetensors`), its ONNX copy (`<name>.onnx`) or the job's `config.json`.
    ETag is the quoted SHA-256; resumable with Range."""
    return _artifact(job_id, name, services, db, owner, range_, if_none_match, if_range, head=False)


@router.head("/artifacts/{name}", summary="Headers of an exported model's download", response_class=Response,
             responses=DOWNLOAD_RESPONSES)
def artifact_headers(job_id: str, name: str, services: ServicesDep, db: DbDep, owner: OwnerDep,
                     range_: RangeHeader = None, if_none_match: IfNoneMatch = None,
                     if_range: IfRange = None) -> Response:
    """What GET answers (status, `Content-Length`, `ETag`, `Accept-Ranges`, `Content-Range`) without the
    body: a client learns the size and checks its copy before downloading."""
    return _artifact(job_id, name, services, db, owner, range_, if_none_match, if_range, head=True)
