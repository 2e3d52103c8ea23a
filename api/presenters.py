"""Rows -> response schemas (links and artifact URLs are built here, relative to the API root)."""

from __future__ import annotations

from pathlib import PurePosixPath

from api.schemas import (
    ArtifactOut,
    DatasetCreated,
    DatasetOut,
    JobBrief,
    JobLinks,
    JobOut,
    NotifyOut,
    TransitionOut,
    WebhookDeliveryOut,
)
from api.services import lineage
from glai_common.models import Dataset, Job

API_PREFIX = "/v1"


_FORMATS = {".safetensors": "safetensors", ".onnx": "onnx", ".json": "json"}


def artifact_format(storage_key: str) -> str:
    """What the file is, from its key's extension (``jobs/<id>/trained.onnx`` -> ``onnx``)."""
    return _FORMATS.get(PurePosixPath(storage_key).suffix, "safetensors")


def job_path(job_id: str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}"


def dataset_out(row: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(row)


def dataset_created(row: Dataset, duplicates: list[str]) -> DatasetCreated:
    return DatasetCreated.model_validate({**dataset_out(row).model_dump(), "duplicate_of": duplicates})


def job_brief(job: Job) -> JobBrief:
    brief = JobBrief.model_validate(job, from_attributes=True)
    brief.notify = NotifyOut(webhook_url=job.webhook_url) if job.webhook_url else None
    brief.kind = lineage.kind_of(job.spec or {})
    return brief


def job_out(job: Job) -> JobOut:
    base = job_path(job.id)
    brief = job_brief(job).model_dump()
    return JobOut(
        **brief,
        spec=job.spec or {},
        transitions=[TransitionOut.model_validate(t) for t in job.transitions],
        artifacts=[ArtifactOut(name=a.name, format=artifact_format(a.storage_key), size_bytes=a.size_bytes,
                               sha256=a.sha256, meta=a.meta or {}, created_at=a.created_at,
                               url=f"{base}/artifacts/{a.name}")
                   for a in job.artifacts],
        webhook_deliveries=[WebhookDeliveryOut.model_validate(d) for d in job.deliveries],
        links=JobLinks(self=base, curves=f"{base}/curves", logs=f"{base}/logs",
                       artifacts=f"{base}/artifacts", cancel=f"{base}/cancel"),
        lineage=lineage.lineage_out(job),
    )
