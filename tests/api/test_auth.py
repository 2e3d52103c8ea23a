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


def test_failed_keys_are_limited_per_client(make_api: Callable[..., Api]) -> None:
    """After GLAI_AUTH_FAILURE_LIMIT wrong keys in the window a client gets 429 with Retry-After, for any
    key (a right one too); other clients are not affected, and the window frees it again."""
    import time

    from fastapi.testclient import TestClient

    api = make_api(auth_failure_limit=5, auth_failure_window_s=1.5)
    wrong = "glai_" + "x" * 43
    statuses = [api.client.get("/v1/jobs", headers={"Authorization": f"Bearer {wrong}{i}"}).status_code
                for i in range(8)]
    assert statuses == [401] * 5 + [429] * 3
    blocked = api.client.get("/v1/jobs")  # the right key, from the same client
    assert blocked.status_code == 429 and blocked.json()["field"] == "Authorization"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 2
    assert "GLAI_AUTH_FAILURE_LIMIT" in blocked.json()["detail"]
    elsewhere = TestClient(api.client.app, headers=api.headers, client=("10.1.2.3", 40000))
    assert elsewhere.get("/v1/jobs").status_code == 200
    assert elsewhere.get("/healthz").status_code == 200
    time.sleep(1.6)
    assert api.client.get("/v1/jobs").status_code == 200  # the window has passed
    assert api.client.get("/v1/jobs", headers={"Authorization": "Bearer glai_nope"}).status_code == 401
    assert api.client.get("/v1/jobs", headers={"Authorization": ""}).status_code == 401  # none is no failure


def test_missing_keys_do_not_count_and_zero_disables(make_api: Callable[..., Api]) -> None:
    api = make_api(auth_failure_limit=2)
    for _ in range(5):
        assert api.client.get("/v1/jobs", headers={"Authorization": ""}).status_code == 401
    assert api.client.get("/v1/jobs").status_code == 200
    unlimited = make_api(auth_failure_limit=0)
    bad = {"Authorization": "Bearer glai_nope"}
    assert all(unlimited.client.get("/v1/jobs", headers=bad).status_code == 401 for _ in range(30))


def test_limiter_window_clients_and_ipv6_prefixes() -> None:
    from api.auth_limit import FailedAuthLimiter, client_key

    now = [100.0]
    limiter = FailedAuthLimiter(3, 10.0, max_clients=2, clock=lambda: now[0])
    for second in (100.0, 101.0, 102.0):
        now[0] = second
        assert limiter.retry_after("a") == 0
        limiter.record_failure("a")
    assert limiter.retry_after("a") == 8  # until the first failure, at 100, is 10 s old
    now[0] = 104.5
    assert limiter.retry_after("a") == 6
    now[0] = 110.0
    assert limiter.retry_after("a") == 0  # the first failure left the window: one more try
    limiter.record_failure("a")
    assert limiter.retry_after("a") == 1
    limiter.record_failure("b")
    limiter.record_failure("c")  # over max_clients: the least recent one ("a") is forgotten
    assert limiter.retry_after("a") == 0
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1" and client_key("testclient") == "testclient"
    assert client_key(None) == "unknown"
