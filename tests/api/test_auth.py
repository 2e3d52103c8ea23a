"""Bearer keys: missing/unknown/revoked -> 401; another owner's ids look like missing ones (404)."""

from __future__ import annotations

from collections.abc import Callable

from api.services import api_keys
from tests.api.helpers import Api, dataset_id, insert_job


def test_missing_key_is_401_with_challenge(api: Api) -> None:
    response = api.client.get("/v1/jobs", headers={"Authorization": ""})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing API key: send 'Authorization: Bearer <key>'", "field": None}


def test_unknown_and_revoked_keys_are_401(api: Api) -> None:
    assert api.client.get("/v1/jobs", headers={"Authorization": "Bearer glai_nope"}).status_code == 401
    key = api.new_key(api.owner)
    assert api.client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with api.session() as session:
        assert api_keys.revoke_key(session, key[: api_keys.PREFIX_LEN]) == 1
    response = api.client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or revoked API key"


def test_revoke_needs_the_exact_prefix(api: Api) -> None:
    with api.session() as session:
        assert api_keys.revoke_key(session, "glai_") == 0  # a short prefix never revokes everyone


def test_other_owner_sees_404_everywhere(api: Api) -> None:
    ds = dataset_id(api)
    job = insert_job(api, ds, "succeeded", artifact=b"x" * 10)
    other = {"Authorization": f"Bearer {api.new_key()}"}
    for method, path in [("GET", f"/v1/datasets/{ds}"), ("DELETE", f"/v1/datasets/{ds}"),
                         ("GET", f"/v1/jobs/{job}"), ("POST", f"/v1/jobs/{job}/cancel"),
                         ("DELETE", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/curves"),
                         ("GET", f"/v1/jobs/{job}/logs"), ("GET", f"/v1/jobs/{job}/artifacts"),
                         ("GET", f"/v1/jobs/{job}/artifacts/trained")]:
        response = api.client.request(method, path, headers=other)
        assert response.status_code == 404, (method, path, response.text)
    listing = api.client.get("/v1/jobs", headers=other).json()
    assert listing["items"] == []
    response = api.client.post("/v1/jobs", json={"dataset_id": ds}, headers=other)
    assert response.status_code == 404 and response.json()["field"] == "dataset_id"
    assert api.client.get(f"/v1/jobs/{job}").status_code == 200  # still there for its owner


def test_auth_disabled_uses_the_local_owner(make_api: Callable[..., Api]) -> None:
    api = make_api(auth_enabled=False)
    response = api.client.get("/v1/datasets", headers={"Authorization": ""})
    assert response.status_code == 200


def test_health_needs_no_key(api: Api) -> None:
    assert api.client.get("/healthz", headers={"Authorization": ""}).json() == {"status": "ok", "checks": {}}
