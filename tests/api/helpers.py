"""Builders for test data: small dataset files, and jobs in any state written straight to the database
(the way the worker would leave them)."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.deps import Services
from api.services import api_keys
from glai_common.models import Artifact, CurvePoint, Job, JobTransition, new_id, utcnow


@dataclass
class Api:
    """A test client authenticated as a fresh owner, plus direct access to the app's services."""

    client: TestClient
    services: Services
    owner: str
    key: str
    enqueued: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def session(self) -> Session:
        return self.services.sessions()

    def new_key(self, owner: str | None = None) -> str:
        with self.session() as session:
            return api_keys.create_key(session, owner or f"other-{uuid.uuid4().hex[:8]}").key

    @property
    def storage_root(self) -> Path:
        return self.services.settings.resolved_storage_dir

    @property
    def tmp_dir(self) -> Path:
        return self.services.settings.data_dir / "tmp"


def npz_bytes(n: int = 60, d: int = 5, classes: int = 3, seed: int = 0, **overrides: Any) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {"X": rng.normal(size=(n, d)).astype(np.float32), "y": np.arange(n) % classes}
    arrays.update(overrides)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def csv_bytes(n: int = 30, label: str = "label") -> bytes:
    lines = [f"a,b,{label}"] + [f"{i * 0.5},{-i},{'cat' if i % 2 else 'dog'}" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def upload(api: Api, content: bytes | None = None, filename: str = "data.npz", **fields: str) -> Any:
    content = npz_bytes() if content is None else content
    return api.client.post("/v1/datasets", files={"file": (filename, content)}, data=fields)


def dataset_id(api: Api) -> str:
    response = upload(api)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def submit(api: Api, ds: str, key: str | None = None, **body: Any) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return api.client.post("/v1/jobs", json={"dataset_id": ds, **body}, headers=headers)


def insert_job(api: Api, ds: str, state: str = "queued", *, created_offset_s: float = 0.0,
               artifact: bytes | None = None, phase: str | None = None,
               created_at: datetime | None = None) -> str:
    """A job row in ``state`` (with its transitions), optionally with a ``trained`` artifact file."""
    job_id = new_id()
    now = (created_at or utcnow()) + timedelta(seconds=created_offset_s)
    with api.session() as session:
        job = Job(id=job_id, owner=api.owner, dataset_id=ds, state=state, phase=phase, spec={},
                  time_limit_s=60, created_at=now, updated_at=now)
        session.add(job)
        session.flush()
        path = ["queued"] + {"queued": [], "running": ["running"], "cancelling": ["running", "cancelling"],
                             "succeeded": ["running", "succeeded"], "failed": ["running", "failed"],
                             "cancelled": ["cancelled"]}[state]
        for before, after in zip([None, *path], path, strict=False):
            session.add(JobTransition(job_id=job_id, field="state", from_value=before, to_value=after))
        if artifact is not None:
            key = f"jobs/{job_id}/trained.safetensors"
            source = api.tmp_dir / f"artifact-{job_id}"  # through the store: local or S3 alike
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(artifact)
            api.services.storage.put_file(key, source)
            source.unlink()
            session.add(Artifact(job_id=job_id, name="trained", storage_key=key, size_bytes=len(artifact),
                                 sha256=hashlib.sha256(artifact).hexdigest(), meta={"accuracy": 0.9}))
        session.commit()
    return job_id


def add_curve(api: Api, job_id: str, series: str, phase: str, values: list[float]) -> None:
    with api.session() as session:
        session.add_all(CurvePoint(job_id=job_id, series=series, phase=phase, step=i, value=v,
                                   wall_time=i * 0.1) for i, v in enumerate(values))
        session.commit()


def add_log(api: Api, job_id: str, lines: list[str]) -> None:
    from glai_common.jobs import append_log

    with api.session() as session:
        append_log(session, job_id, "\n".join(lines))
        session.commit()
