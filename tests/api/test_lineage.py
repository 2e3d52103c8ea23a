"""Lineage through the API: children of a parent job, merges and sweeps are validated before anything is
stored. Every bad case is a 4xx naming the field, and leaves no job, no key and nothing enqueued."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select, update

from glai_common.models import Artifact, IdempotencyKey, Job
from tests.api.helpers import Api, npz_bytes, submit, upload


def _dataset(api: Api, **npz: Any) -> str:
    response = upload(api, npz_bytes(**npz))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _succeeded(api: Api, job_id: str, state: str = "succeeded", trained: bool = True,
               summary: dict[str, Any] | None = None) -> str:
    """Leave a submitted job as a worker would: final state, a trained model row."""
    with api.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state=state, summary=summary or {}))
        if trained:
            session.add(Artifact(job_id=job_id, name="trained",
                                 storage_key=f"jobs/{job_id}/trained.safetensors",
                                 sha256="0" * 64, size_bytes=1, meta={}))
        session.commit()
    return job_id


def _parent(api: Api, ds: str, **body: Any) -> str:
    response = submit(api, ds, **body)
    assert response.status_code == 202, response.text
    return _succeeded(api, response.json()["id"])


def _counts(api: Api) -> tuple[int, int]:
    with api.session() as session:
        jobs = session.scalar(select(func.count()).select_from(Job).where(Job.owner == api.owner))
        keys = session.scalar(select(func.count()).select_from(IdempotencyKey)
                              .where(IdempotencyKey.owner == api.owner))
    return int(jobs or 0), int(keys or 0)


def _refused(api: Api, status: int, field: str, path: str = "/v1/jobs", **body: Any) -> dict[str, Any]:
    before, enqueued = _counts(api), list(api.enqueued)
    response = api.client.post(path, json=body, headers={"Idempotency-Key": "lineage-bad"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field, error
    assert _counts(api) == before and api.enqueued == enqueued  # nothing stored, nothing sent
    return error


def test_a_child_continues_its_parent_and_records_its_lineage(api: Api) -> None:
    parent = _parent(api, _dataset(api, seed=1), seed=3, validation_fraction=0.25)
    new = _dataset(api, seed=2)
    response = submit(api, new, key="child-1", parent_job_id=parent, seed=5)
    assert response.status_code == 202, response.text
    child = response.json()
    assert child["parent_job_id"] == parent and child["kind"] == "incremental"
    lineage = child["lineage"]
    assert lineage["kind"] == "incremental" and lineage["structure_job_id"] == parent
    assert lineage["rows"] == "union" and lineage["data"] == "new_rows"
    with api.session() as session:
        parent_dataset = session.get(Job, parent).dataset_id  # type: ignore[union-attr]
    assert lineage["datasets"] == [parent_dataset, new]
    parts = child["spec"]["lineage"]["parts"]
    assert parts[0]["seed"] == 3 and parts[1] == {"dataset_id": new, "seed": 5,
                                                  "validation_fraction": parts[1]["validation_fraction"],
                                                  "skip_rows": 0}
    assert child["spec"]["config"]["pruning"]["enabled"] is False  # a child refits Θ only
    assert api.enqueued[-1] == child["id"]
    replay = submit(api, new, key="child-1", parent_job_id=parent, seed=5)
    assert replay.status_code == 200 and replay.json()["id"] == child["id"]
    children = api.client.get(f"/v1/jobs?parent_job_id={parent}").json()["items"]
    assert [c["id"] for c in children] == [child["id"]]
    assert api.client.get(f"/v1/jobs/{parent}").json()["lineage"]["kind"] == "train"
    grandchild = submit(api, _dataset(api, seed=4), parent_job_id=child["id"])
    assert grandchild.status_code == 409 and grandchild.json()["field"] == "parent_job_id"  # still queued
    _succeeded(api, child["id"])
    grandchild = submit(api, _dataset(api, seed=4), parent_job_id=child["id"])
    assert grandchild.status_code == 202, grandchild.text
    assert grandchild.json()["lineage"]["structure_job_id"] == parent
    assert len(grandchild.json()["lineage"]["datasets"]) == 3
    deleting = api.client.delete(f"/v1/jobs/{child['id']}")
    assert deleting.status_code == 409 and grandchild.json()["id"] in deleting.json()["detail"]


def test_bad_lineage_is_refused_by_field_and_stores_nothing(api: Api, make_api: Any) -> None:
    parent_ds = _dataset(api, seed=1)
    parent = _parent(api, parent_ds)
    new = _dataset(api, seed=2)
    other = make_api()
    foreign = _parent(other, _dataset(other))
    error = _refused(api, 404, "parent_job_id", dataset_id=new, parent_job_id=foreign)
    assert foreign in error["detail"]
    _refused(api, 404, "parent_job_id", dataset_id=new, parent_job_id="0" * 32)
    _refused(api, 404, "parent_job_id", dataset_id=new, parent_job_id="not-an-id")
    for state in ("failed", "cancelled", "running"):
        job = submit(api, parent_ds).json()["id"]
        _succeeded(api, job, state=state)
        assert state in _refused(api, 409, "parent_job_id", dataset_id=new, parent_job_id=job)["detail"]
    untrained = _succeeded(api, submit(api, parent_ds).json()["id"], trained=False)
    _refused(api, 409, "parent_job_id", dataset_id=new, parent_job_id=untrained)
    wide = _dataset(api, d=7)
    assert "7 features" in _refused(api, 422, "dataset_id", dataset_id=wide, parent_job_id=parent)["detail"]
    fewer = _dataset(api, classes=2)
    assert "'2'" in _refused(api, 422, "dataset_id", dataset_id=fewer, parent_job_id=parent)["detail"]
    _refused(api, 422, "dataset_id", dataset_id=parent_ds, parent_job_id=parent)  # its rows twice
    _refused(api, 422, "architecture", dataset_id=new, parent_job_id=parent, architecture={"hidden": [8]})
    _refused(api, 422, "structural", dataset_id=new, parent_job_id=parent, structural={"max_epochs": 3})
    _refused(api, 422, "pruning.enabled", dataset_id=new, parent_job_id=parent, pruning={"enabled": True})
    _refused(api, 422, "baseline.enabled", dataset_id=new, parent_job_id=parent, baseline={"enabled": True})
    _refused(api, 422, "sweep", dataset_id=new, parent_job_id=parent, sweep={"seed": [0, 1]})
    _refused(api, 422, "incremental", dataset_id=new, incremental={"rows": "own"})
    _refused(api, 422, "incremental.rows", dataset_id=new, parent_job_id=parent, incremental={"rows": "all"})
    shorter = _dataset(api, n=30)
    _refused(api, 422, "incremental.data", dataset_id=shorter, parent_job_id=parent,
             incremental={"data": "appended"})


def test_an_appended_dataset_skips_the_rows_it_repeats_and_new_classes_are_welcome(api: Api) -> None:
    base = npz_bytes(n=60, seed=1)
    parent_ds = _dataset(api, n=60, seed=1)
    parent = _parent(api, parent_ds)
    rng = np.random.default_rng(9)
    with np.load(__import__("io").BytesIO(base)) as arrays:
        x = np.concatenate([arrays["X"], rng.normal(size=(20, 5)).astype(np.float32)])
        y = np.concatenate([arrays["y"], np.arange(20) % 4])  # a fourth class arrives
    appended = _dataset(api, X=x, y=y)
    response = submit(api, appended, parent_job_id=parent, incremental={"data": "appended"})
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["lineage"]["parts"][-1]["skip_rows"] == 60


def test_merges_need_one_structure_and_disjoint_rows(api: Api, make_api: Any) -> None:
    parent = _parent(api, _dataset(api, seed=1))
    copies = []
    for seed in (2, 3):
        response = submit(api, _dataset(api, seed=seed), parent_job_id=parent, incremental={"rows": "own"})
        assert response.status_code == 202, response.text
        copies.append(_succeeded(api, response.json()["id"]))
    merged = api.client.post("/v1/models/merge", json={"job_ids": [parent, *copies], "name": "all"},
                             headers={"Idempotency-Key": "merge-1"})
    assert merged.status_code == 202, merged.text
    body = merged.json()
    assert body["kind"] == "merge" and body["lineage"]["sources"] == [parent, *copies]
    assert body["lineage"]["structure_job_id"] == parent and len(body["lineage"]["datasets"]) == 3
    assert api.enqueued[-1] == body["id"]
    again = api.client.post("/v1/models/merge", json={"job_ids": [parent, *copies], "name": "all"},
                            headers={"Idempotency-Key": "merge-1"})
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    union_child = submit(api, _dataset(api, seed=4), parent_job_id=parent).json()["id"]
    _succeeded(api, union_child)
    error = _refused(api, 422, "job_ids", "/v1/models/merge", job_ids=[parent, union_child])
    assert "twice" in error["detail"]
    stranger = _parent(api, _dataset(api, seed=5))
    assert "one structure" in _refused(api, 422, "job_ids", "/v1/models/merge",
                                       job_ids=[parent, stranger])["detail"]
    other = make_api()
    foreign = _parent(other, _dataset(other))
    _refused(api, 404, "job_ids[1]", "/v1/models/merge", job_ids=[parent, foreign])
    queued = submit(api, _dataset(api, seed=6), parent_job_id=parent,
                    incremental={"rows": "own"}).json()["id"]
    _refused(api, 409, "job_ids[1]", "/v1/models/merge", job_ids=[parent, queued])
    _refused(api, 422, "job_ids", "/v1/models/merge", job_ids=[parent])
    _refused(api, 422, "job_ids", "/v1/models/merge", job_ids=[parent, parent])
    _refused(api, 422, "method", "/v1/models/merge", job_ids=[parent, copies[0]], method="average")


@pytest.mark.parametrize(("sweep", "field"), [
    ({}, "sweep"),
    ({"lr": []}, "sweep.lr"),
    ({"lr": [0.0]}, "sweep.lr.0"),
    ({"lr": [1e-3, 1e-3]}, "sweep.lr"),
    ({"reduction_factor": ["big"]}, "sweep.reduction_factor"),
    ({"seed": [-1]}, "sweep.seed.0"),
    ({"seed": ["1"]}, "sweep.seed.0"),
    ({"depth": [2]}, "sweep.depth"),
    ({"halving": {"eta": 2}}, "sweep"),  # halving alone is no grid
    ({"lr": [1e-3], "halving": {"eta": 1}}, "sweep.halving.eta"),
    ({"lr": [1e-3], "halving": {"first_rung": 0}}, "sweep.halving.first_rung"),
    ({"lr": [1e-3], "halving": {"rate": 2}}, "sweep.halving.rate"),
])
def test_bad_sweeps_are_refused_by_field(api: Api, sweep: dict[str, Any], field: str) -> None:
    _refused(api, 422, field, dataset_id=_dataset(api), sweep=sweep)


def test_a_sweep_is_stored_with_its_grid_and_bounded(api: Api, make_api: Any) -> None:
    ds = _dataset(api)
    response = submit(api, ds, sweep={"lr": [1e-3, 3e-3], "reduction_factor": ["auto", 2], "seed": [0, 1]})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["kind"] == "sweep"
    assert body["spec"]["sweep"] == {"lr": [1e-3, 3e-3], "reduction_factor": ["auto", 2.0], "seed": [0, 1]}
    halved = submit(api, ds, sweep={"lr": [1e-3, 3e-3], "halving": {"eta": 3}})
    assert halved.status_code == 202, halved.text
    assert halved.json()["spec"]["sweep"] == {"lr": [1e-3, 3e-3], "halving": {"eta": 3, "first_rung": None}}
    small = make_api(max_sweep_heads=8)
    too_many = _refused(small, 422, "sweep", dataset_id=_dataset(small),
                        sweep={"lr": [1e-3, 3e-3], "seed": [0, 1, 2]})  # 6 GLAI + 6 MLP heads
    assert "GLAI_MAX_SWEEP_HEADS=8" in too_many["detail"]
    narrow = make_api(max_hidden_width=300)
    error = _refused(narrow, 422, "sweep.reduction_factor", dataset_id=_dataset(narrow),
                     sweep={"reduction_factor": [0.5]})
    assert "0.5" in error["detail"]
