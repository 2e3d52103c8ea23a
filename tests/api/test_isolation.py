"""Identity and isolation: two owners share one app; neither can read, change or even detect the other's
datasets, jobs, curves, logs, artifacts or idempotency keys. Plus the key mechanics behind it: hashed
storage, revocation, key format, constant-time comparison, and auth-disabled servers staying local.

Each request another owner makes is answered exactly like a request for an id that never existed: same
status, same message shape, nothing from the owner's rows in the body or the headers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.services import api_keys
from glai_common.models import ApiKey, Dataset, IdempotencyKey, Job
from tests.api.helpers import Api, add_curve, add_log, dataset_id, insert_job, submit

ARTIFACT = b"safetensors-bytes" * 64


class Owners:
    """Owner A with a full set of rows (dataset, a finished job with an artifact, curves and logs, a queued
    job, an idempotency key); owner B with a key on the same app and nothing of its own yet."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.dataset = dataset_id(api)
        self.finished = insert_job(api, self.dataset, "succeeded", artifact=ARTIFACT)
        add_curve(api, self.finished, "val_accuracy", "structural", [0.5, 0.75, 0.875])
        add_log(api, self.finished, ["secret log line of owner A"])
        response = submit(api, self.dataset, key="shared-key", architecture={"hidden": [8]})
        assert response.status_code == 202, response.text
        self.queued = response.json()["id"]
        self.b_owner = f"owner-b-{uuid.uuid4().hex[:8]}"
        self.b_key = api.new_key(self.b_owner)
        self.a_ids = {self.dataset, self.finished, self.queued}

    @property
    def b(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.b_key}"}

    def as_b(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self.b, **kwargs.pop("headers", {})}
        return self.api.client.request(method, path, headers=headers, **kwargs)

    def assert_no_leak(self, response: Any) -> None:
        """Nothing that identifies A's rows, anywhere in the answer."""
        blob = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
        for secret in self.a_ids - {None}:
            # the id the caller sent may be echoed in a 404 message; nothing else of A's may appear
            if secret in blob and response.status_code != 404:
                raise AssertionError(f"A's id {secret} leaked in {response.status_code}: {blob[:300]}")
        for marker in ("secret log line", "val_accuracy", "safetensors-bytes", self.api.owner):
            assert marker not in blob, (marker, blob[:300])


@pytest.fixture
def owners(api: Api) -> Owners:
    return Owners(api)


def _missing() -> str:
    return uuid.uuid4().hex


def _endpoints(dataset: str, job: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every route that takes a dataset or job id (method, path, request extras)."""
    return [
        ("GET", f"/v1/datasets/{dataset}", {}),
        ("DELETE", f"/v1/datasets/{dataset}", {}),
        ("GET", f"/v1/jobs/{job}", {}),
        ("POST", f"/v1/jobs/{job}/cancel", {}),
        ("DELETE", f"/v1/jobs/{job}", {}),
        ("GET", f"/v1/jobs/{job}/curves", {}),
        ("GET", f"/v1/jobs/{job}/curves", {"params": {"keys": "val_accuracy", "max_points": 2}}),
        ("GET", f"/v1/jobs/{job}/logs", {}),
        ("GET", f"/v1/jobs/{job}/logs", {"params": {"offset": 3}}),
        ("GET", f"/v1/jobs/{job}/artifacts", {}),
        ("GET", f"/v1/jobs/{job}/artifacts/trained", {}),
        # conditional and ranged downloads must not answer 304/206/416 before the owner check
        ("GET", f"/v1/jobs/{job}/artifacts/trained", {"headers": {"If-None-Match": "*"}}),
        ("GET", f"/v1/jobs/{job}/artifacts/trained", {"headers": {"Range": "bytes=0-3"}}),
        ("GET", f"/v1/jobs/{job}/artifacts/trained", {"headers": {"Range": "bytes=999999-"}}),
    ]


def _shape(response: Any, ident: str) -> tuple[int, str, str | None]:
    body = response.json()
    return response.status_code, body["detail"].replace(ident, "<id>"), body["field"]


@pytest.mark.parametrize("which", ["finished", "queued"])
def test_every_id_route_answers_another_owner_like_a_missing_id(owners: Owners, which: str) -> None:
    job = getattr(owners, which)
    missing_ds, missing_job = _missing(), _missing()
    theirs = _endpoints(owners.dataset, job)
    nobody = _endpoints(missing_ds, missing_job)
    for (method, path, extra), (_, ghost_path, ghost_extra) in zip(theirs, nobody, strict=True):
        response = owners.as_b(method, path, **extra)
        ghost = owners.as_b(method, ghost_path, **ghost_extra)
        assert response.status_code == 404, (method, path, extra, response.text)
        owners.assert_no_leak(response)
        ident = owners.dataset if "/datasets/" in path else job
        ghost_ident = missing_ds if "/datasets/" in path else missing_job
        assert _shape(response, ident) == _shape(ghost, ghost_ident), (method, path)
        assert "ETag" not in response.headers and "Content-Range" not in response.headers


def test_another_owner_changes_nothing(owners: Owners) -> None:
    for method, path, extra in _endpoints(owners.dataset, owners.queued) + _endpoints(
        owners.dataset, owners.finished
    ):
        owners.as_b(method, path, **extra)
    api = owners.api
    with api.session() as session:
        assert session.get(Dataset, owners.dataset) is not None
        queued, finished = session.get(Job, owners.queued), session.get(Job, owners.finished)
        assert queued is not None and queued.state == "queued" and not queued.cancel_requested
        assert finished is not None and finished.state == "succeeded"
    assert api.client.get(f"/v1/jobs/{owners.finished}/artifacts/trained").content == ARTIFACT
    assert api.storage_root.joinpath(f"datasets/{owners.dataset}").is_dir()


def test_listings_never_show_another_owners_rows(owners: Owners) -> None:
    for params in (
        {},
        {"limit": 1},
        {"state": "queued"},
        {"state": "succeeded"},
        {"created_after": "2000-01-01T00:00:00Z"},
    ):
        response = owners.as_b("GET", "/v1/jobs", params=params)
        assert response.status_code == 200 and response.json() == {"items": [], "next_cursor": None}
    response = owners.as_b("GET", "/v1/datasets")
    assert response.json() == {"items": [], "next_cursor": None}
    # A's own cursor, replayed by B, is only a position: it pages over B's rows, never A's
    page = owners.api.client.get("/v1/jobs", params={"limit": 1}).json()
    assert page["next_cursor"]
    for path in ("/v1/jobs", "/v1/datasets"):
        response = owners.as_b("GET", path, params={"cursor": page["next_cursor"]})
        assert response.status_code == 200 and response.json()["items"] == []
    # once B has rows, B sees exactly those
    b_dataset = owners.as_b("POST", "/v1/datasets/builtin", json={"name": "iris"}).json()["id"]
    listed = owners.as_b("GET", "/v1/datasets").json()["items"]
    assert [d["id"] for d in listed] == [b_dataset]
    a_listed = owners.api.client.get("/v1/datasets").json()["items"]
    assert b_dataset not in {d["id"] for d in a_listed} and owners.dataset in {d["id"] for d in a_listed}


def test_submitting_on_another_owners_dataset_is_404_and_stores_nothing(owners: Owners) -> None:
    response = owners.as_b(
        "POST", "/v1/jobs", json={"dataset_id": owners.dataset}, headers={"Idempotency-Key": "b-1"}
    )
    assert response.status_code == 404 and response.json()["field"] == "dataset_id"
    owners.assert_no_leak(response)
    with owners.api.session() as session:
        assert session.scalars(select(Job).where(Job.owner == owners.b_owner)).all() == []
        assert (
            session.scalars(select(IdempotencyKey).where(IdempotencyKey.owner == owners.b_owner)).all() == []
        )


def test_idempotency_keys_are_scoped_to_their_owner(owners: Owners) -> None:
    """B reusing A's key string neither replays A's job (200), nor conflicts with it (409 naming it)."""
    b_dataset = owners.as_b("POST", "/v1/datasets/builtin", json={"name": "iris"}).json()["id"]
    for body in (
        {"dataset_id": owners.dataset, "architecture": {"hidden": [8]}},  # A's exact request
        {"dataset_id": b_dataset},
    ):
        response = owners.as_b("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": "shared-key"})
        owners.assert_no_leak(response)
        assert response.json().get("id") != owners.queued
        assert response.status_code in (202, 404), response.text
    replay = owners.as_b(
        "POST", "/v1/jobs", json={"dataset_id": b_dataset}, headers={"Idempotency-Key": "shared-key"}
    )
    assert replay.status_code == 200 and replay.json()["dataset_id"] == b_dataset
    again = submit(owners.api, owners.dataset, key="shared-key", architecture={"hidden": [8]})
    assert again.status_code == 200 and again.json()["id"] == owners.queued


# ------------------------------------------------------------------------------------------ the keys


def test_keys_are_stored_hashed_and_well_formed(api: Api) -> None:
    with api.session() as session:
        issued = api_keys.create_key(session, "hash-check")
        row = session.scalar(select(ApiKey).where(ApiKey.owner == "hash-check"))
    assert row is not None and issued.key not in {row.key_hash, row.prefix, row.name}
    assert row.key_hash == api_keys.hash_key(issued.key) and len(row.key_hash) == 64
    assert api_keys.well_formed(issued.key) and issued.key.startswith("glai_")
    assert row.prefix == issued.key[: api_keys.PREFIX_LEN]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer glai_",
        "Bearer glai_short", "Bearer glai_" + "a" * 15,
        "Bearer " + "glai_" + "a" * 500,
        "Bearer nope_" + "a" * 43,
        "Bearer glai_" + "a" * 42 + "!",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "bearer  ",
        "Token glai_" + "a" * 43,
    ],
)
def test_malformed_keys_are_401_without_a_lookup(
    api: Api, header: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = api_keys.hash_key
    monkeypatch.setattr(api_keys, "hash_key", lambda key: calls.append(key) or real(key))
    response = api.client.get("/v1/jobs", headers={"Authorization": header})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert calls == []  # refused before hashing, let alone querying


def test_an_unknown_well_formed_key_is_401(api: Api) -> None:
    key = "glai_" + "A" * 43
    assert api_keys.well_formed(key)
    response = api.client.get("/v1/datasets", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401 and response.json()["detail"] == "invalid or revoked API key"


def test_the_final_comparison_is_constant_time(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(api_keys.hmac, "compare_digest", spy)
    assert api.client.get("/v1/jobs").status_code == 200
    assert compared == [(api_keys.hash_key(api.key),) * 2]


def test_a_revoked_key_loses_its_owners_rows_but_the_owners_other_keys_keep_them(owners: Owners) -> None:
    api = owners.api
    second = api.new_key(api.owner)
    with api.session() as session:
        assert api_keys.revoke_key(session, api.key[: api_keys.PREFIX_LEN]) == 1
    for method, path, extra in _endpoints(owners.dataset, owners.finished)[:1] + [("GET", "/v1/jobs", {})]:
        response = api.client.request(method, path, **extra)
        assert response.status_code == 401, (path, response.text)
        owners.assert_no_leak(response)
    fresh = TestClient(api.client.app, headers={"Authorization": f"Bearer {second}"})
    assert fresh.get(f"/v1/jobs/{owners.finished}").status_code == 200
    assert {j["id"] for j in fresh.get("/v1/jobs").json()["items"]} == {owners.finished, owners.queued}
    with api.session() as session:  # revoking again finds nothing active: it stays revoked
        assert api_keys.revoke_key(session, api.key) == 0


def test_every_v1_operation_demands_a_key(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    seen = 0
    for path, item in spec["paths"].items():
        if not path.startswith("/v1"):
            continue
        concrete = (
            path.replace("{dataset_id}", _missing())
            .replace("{job_id}", _missing())
            .replace("{name}", "trained")
        )
        for method in item:
            response = api.client.request(method.upper(), concrete, headers={"Authorization": ""})
            assert response.status_code == 401, (method, path, response.text)
            seen += 1
    assert seen >= 12


def test_auth_disabled_serves_local_peers_only(make_api: Callable[..., Api]) -> None:
    api = make_api(auth_enabled=False)
    app = api.client.app
    for peer in ("127.0.0.1", "::1"):
        assert TestClient(app, client=(peer, 5000)).get("/v1/datasets").status_code == 200
    for peer in ("203.0.113.7", "10.0.0.2", "::ffff:192.0.2.1"):
        response = TestClient(app, client=(peer, 5000)).get("/v1/datasets")
        assert response.status_code == 401 and "GLAI_AUTH_ENABLED" in response.json()["detail"]
