"""Submitting, idempotency, limits, listing, cancelling and deleting jobs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from glai_common.models import IdempotencyKey, Job
from glai_core.config import StructuralConfig
from tests.api.helpers import Api, dataset_id, insert_job, submit


def job_count(api: Api) -> int:
    with api.session() as session:
        return int(session.scalar(select(func.count()).select_from(Job).where(Job.owner == api.owner)) or 0)


def test_submit_commits_then_enqueues_with_defaults(api: Api) -> None:
    ds = dataset_id(api)
    response = submit(api, ds, architecture={"hidden": [32]}, structural={"max_epochs": 3})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and api.enqueued == [job["id"]]
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    config = job["spec"]["config"]
    assert config["architecture"] == {"hidden": [32], "reduction_factor": None}
    assert config["structural"]["max_epochs"] == 3
    assert config["structural"]["lr"] == StructuralConfig().lr  # defaults come from glai_core
    assert job["spec"]["backbone"] is None and job["spec"]["validation_fraction"] == 0.2
    assert config["precision"] == "auto"
    assert [(t["from_value"], t["to_value"]) for t in job["transitions"]] == [(None, "queued")]
    assert job["links"]["curves"] == f"/v1/jobs/{job['id']}/curves"


def test_precision_is_stored_in_the_config(api: Api) -> None:
    response = submit(api, dataset_id(api), precision="fp32")
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["config"]["precision"] == "fp32"


def test_idempotency_same_body_same_job_different_body_409(api: Api) -> None:
    ds = dataset_id(api)
    first = submit(api, ds, key="abc", architecture={"hidden": [16]})
    again = submit(api, ds, key="abc", architecture={"hidden": [16], "reduction_factor": "auto"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and api.enqueued == [first.json()["id"]]
    conflict = submit(api, ds, key="abc", architecture={"hidden": [17]})
    assert conflict.status_code == 409 and conflict.json()["field"] == "Idempotency-Key"
    assert job_count(api) == 1
    other = api.new_key()  # keys are per owner: another owner may reuse the same string
    headers = {"Idempotency-Key": "abc", "Authorization": f"Bearer {other}"}
    response = api.client.post("/v1/jobs", json={"dataset_id": ds}, headers=headers)
    assert response.status_code == 404  # (and not a replay of someone else's job)


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"architecture": {"hidden": [8] * 5}}, "architecture.hidden", "at most 4 hidden layers"),
    ({"architecture": {"hidden": [70_000]}}, "architecture.hidden.0", "GLAI_MAX_HIDDEN_WIDTH"),
    ({"structural": {"max_epochs": 5000}}, "structural.max_epochs", "GLAI_MAX_EPOCHS"),
    ({"baseline": {"max_epochs": 1001}}, "baseline.max_epochs", "1000"),
    ({"time_limit_s": 10**7}, "time_limit_s", "GLAI_MAX_JOB_TIME_LIMIT_S"),
    ({"architecture": {"hidden": [4096, 4096], "reduction_factor": 1}}, "architecture.hidden",
     "GLAI_MAX_TRAINABLE_PARAMS"),
    ({"architecture": {"hidden": [0]}}, "architecture.hidden", "at least 1"),
    ({"architecture": {"reduction_factor": -2}}, "architecture.reduction_factor", "auto"),
    ({"structural": {"min_epochs": 9, "max_epochs": 3}}, "structural", "min_epochs"),
    ({"pruning": {"sparsities": [1.5]}}, "pruning.sparsities", "between 0 and 1"),
    ({"quantitative": {"solver": "sgd"}}, "quantitative.solver", "adam"),
    ({"unknown": 1}, "unknown", "not permitted"),
])
def test_limits_and_validation_name_the_field(api: Api, body: dict[str, object], field: str,
                                              words: str) -> None:
    ds = dataset_id(api)
    response = submit(api, ds, key="k", **body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert words.lower() in response.json()["detail"].lower()
    assert job_count(api) == 0 and api.enqueued == []
    with api.session() as session:
        assert session.scalar(select(IdempotencyKey).where(IdempotencyKey.owner == api.owner)) is None


def test_unknown_dataset_is_404(api: Api) -> None:
    response = submit(api, "0" * 32)
    assert response.status_code == 404 and response.json()["field"] == "dataset_id"


def test_broker_down_fails_the_job_and_frees_the_key(make_api: Callable[..., Api]) -> None:
    def down(_job_id: str) -> None:
        raise ConnectionError("connection refused")

    api = make_api(enqueue=down)
    ds = dataset_id(api)
    response = submit(api, ds, key="retry-me")
    assert response.status_code == 503 and "broker" in response.json()["detail"]
    job = api.client.get(f"/v1/jobs/{response.json()['job_id']}").json()
    assert job["state"] == "failed" and job["failure_kind"] == "internal"
    api.services.enqueue = lambda _job_id: None
    retry = submit(api, ds, key="retry-me")
    assert retry.status_code == 202 and retry.json()["id"] != job["id"]


def test_list_filters_and_cursor(api: Api) -> None:
    ds = dataset_id(api)
    base = datetime.now(UTC) - timedelta(hours=1)
    ids = [insert_job(api, ds, state, created_at=base, created_offset_s=i)
           for i, state in enumerate(["queued", "running", "succeeded", "failed", "succeeded"])]
    newest_first = ids[::-1]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first
    done = api.client.get("/v1/jobs", params={"state": "succeeded"}).json()["items"]
    assert [j["id"] for j in done] == [ids[4], ids[2]]
    middle = (base + timedelta(seconds=2.5)).isoformat()
    after = api.client.get("/v1/jobs", params={"created_after": middle}).json()["items"]
    assert [j["id"] for j in after] == [ids[4], ids[3]]
    before = api.client.get("/v1/jobs", params={"created_before": middle}).json()["items"]
    assert [j["id"] for j in before] == [ids[2], ids[1], ids[0]]
    assert api.client.get("/v1/jobs", params={"cursor": "garbage!"}).json()["field"] == "cursor"
    assert api.client.get("/v1/jobs", params={"state": "sleeping"}).status_code == 422


def test_cancel_semantics(api: Api) -> None:
    ds = dataset_id(api)
    queued = submit(api, ds).json()["id"]
    body = api.client.post(f"/v1/jobs/{queued}/cancel").json()
    assert body["state"] == "cancelled" and body["transitions"][-1]["to_value"] == "cancelled"
    running = insert_job(api, ds, "running", phase="structural")
    response = api.client.post(f"/v1/jobs/{running}/cancel")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelling" and response.json()["cancel_requested"] is True
    assert api.client.post(f"/v1/jobs/{running}/cancel").json()["state"] == "cancelling"
    finished = insert_job(api, ds, "succeeded")
    response = api.client.post(f"/v1/jobs/{finished}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "succeeded"


def test_delete_only_when_finished_and_removes_artifacts(api: Api) -> None:
    ds = dataset_id(api)
    running = insert_job(api, ds, "running")
    response = api.client.delete(f"/v1/jobs/{running}")
    assert response.status_code == 409 and "running" in response.json()["detail"]
    done = insert_job(api, ds, "succeeded", artifact=b"model-bytes")
    assert (api.storage_root / "jobs" / done / "trained.safetensors").exists()
    assert api.client.delete(f"/v1/jobs/{done}").status_code == 204
    assert api.client.get(f"/v1/jobs/{done}").status_code == 404
    assert not (api.storage_root / "jobs" / done).exists()


def test_oversized_json_body_is_413(make_api: Callable[..., Api]) -> None:
    api = make_api(max_request_bytes=500)
    response = api.client.post("/v1/jobs", json={"dataset_id": "x" * 1000})
    assert response.status_code == 413 and "GLAI_MAX_REQUEST_BYTES" in response.json()["detail"]
