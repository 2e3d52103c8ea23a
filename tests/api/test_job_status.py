"""GET /v1/jobs/{id}/status (the lean poll) and ETag revalidation of it and of GET /v1/jobs/{id}."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from api.services import api_keys
from glai_client.client import GlaiClient
from glai_common.models import Job
from tests.api.helpers import Api, dataset_id, insert_job

LEAN = {"id", "state", "phase", "progress", "epoch", "cancel_requested", "failure_kind", "failure_message",
        "attempts", "created_at", "started_at", "finished_at", "updated_at"}


def test_status_is_the_moving_columns_only_and_agrees_with_the_job(api: Api) -> None:
    job_id = insert_job(api, dataset_id(api), "running", phase="structural")
    status = api.client.get(f"/v1/jobs/{job_id}/status")
    assert status.status_code == 200, status.text
    assert set(status.json()) == LEAN
    full = api.client.get(f"/v1/jobs/{job_id}").json()
    assert {k: full[k] for k in LEAN} == status.json()
    assert status.headers["cache-control"] == "no-cache"


def test_status_revalidates_with_its_etag_until_the_job_moves(api: Api) -> None:
    job_id = insert_job(api, dataset_id(api), "running", phase="structural")
    first = api.client.get(f"/v1/jobs/{job_id}/status")
    tag = first.headers["etag"]
    assert tag.startswith('W/"')
    again = api.client.get(f"/v1/jobs/{job_id}/status", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    listed = api.client.get(f"/v1/jobs/{job_id}/status", headers={"If-None-Match": f'"other", {tag}'})
    assert listed.status_code == 304  # one of several tags, weak comparison
    with api.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.progress = 0.5
        session.commit()
    moved = api.client.get(f"/v1/jobs/{job_id}/status", headers={"If-None-Match": tag})
    assert moved.status_code == 200 and moved.json()["progress"] == 0.5
    assert moved.headers["etag"] != tag


def test_the_full_job_has_a_strong_etag_that_changes_with_any_part(api: Api) -> None:
    job_id = insert_job(api, dataset_id(api), "succeeded")
    first = api.client.get(f"/v1/jobs/{job_id}")
    tag = first.headers["etag"]
    assert first.status_code == 200 and not tag.startswith("W/")
    assert api.client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": tag}).status_code == 304
    with api.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.summary = {"glai_accuracy": 0.9}  # not a status column: the full job's tag moves all the same
        session.commit()
    changed = api.client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.json()["summary"] == {"glai_accuracy": 0.9}


def test_status_is_scoped_to_the_owner_and_a_revoked_key_fails_at_once(api: Api) -> None:
    job_id = insert_job(api, dataset_id(api), "running")
    other = api.new_key()
    headers = {"Authorization": f"Bearer {other}"}
    hidden = api.client.get(f"/v1/jobs/{job_id}/status", headers=headers)
    assert hidden.status_code == 404 and hidden.json()["detail"] == f"job '{job_id}' not found"
    assert api.client.get("/v1/jobs/not-an-id/status").status_code == 404
    assert api.client.get(f"/v1/jobs/{job_id}/status").status_code == 200  # warm: nothing to cache
    with api.session() as session:
        assert api_keys.revoke_key(session, api.key[: api_keys.PREFIX_LEN]) == 1
    revoked = api.client.get(f"/v1/jobs/{job_id}/status")
    assert revoked.status_code == 401 and revoked.json()["detail"] == "invalid or revoked API key"
    for bad in ("Bearer glai_" + "x" * 40, "Bearer nonsense"):
        assert api.client.get(f"/v1/jobs/{job_id}/status", headers={"Authorization": bad}).status_code == 401
        assert api.client.get("/v1/jobs/not-an-id/status", headers={"Authorization": bad}).status_code == 401
    assert api.client.get(f"/v1/jobs/{job_id}/status", headers={"Authorization": ""}).status_code == 401


def test_status_counts_failed_keys_towards_the_lockout(make_api: Callable[..., Api]) -> None:
    api = make_api(auth_failure_limit=2)
    job_id = insert_job(api, dataset_id(api), "running")
    wrong = {"Authorization": "Bearer glai_" + "y" * 40}
    codes = [api.client.get(f"/v1/jobs/{job_id}/status", headers=wrong).status_code for _ in range(3)]
    assert codes[:2] == [401, 401] and codes[2] == 429
    locked = api.client.get(f"/v1/jobs/{job_id}/status")  # even the right key, from that address
    assert locked.status_code == 429 and "Retry-After" in locked.headers


def test_status_without_auth_serves_the_local_owner(make_api: Callable[..., Api]) -> None:
    api = make_api(auth_enabled=False)
    ds = api.client.post("/v1/datasets/builtin", json={"name": "iris"}).json()["id"]
    job_id = api.client.post("/v1/jobs", json={"dataset_id": ds}).json()["id"]
    status = api.client.get(f"/v1/jobs/{job_id}/status", headers={"Authorization": ""})
    assert status.status_code == 200 and status.json()["state"] == "queued"


def test_the_client_waits_on_the_lean_status(server: tuple[Api, str]) -> None:
    """GlaiClient.wait polls the status with If-None-Match and reads the whole job only when it moved."""
    api, url = server
    job_id = insert_job(api, dataset_id(api), "running", phase="structural")
    seen: list[tuple[str, int]] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            seen.append((request.url.path, response.status_code))
            return response

    def finish() -> None:
        time.sleep(0.5)
        with api.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.state, job.phase, job.progress = "succeeded", None, 1.0
            session.commit()

    finisher = threading.Thread(target=finish)
    finisher.start()
    with GlaiClient(url, api.key, transport=Counting()) as client:
        status, tag = client.job_status(job_id)
        assert status is not None and status["state"] == "running" and tag
        assert client.job_status(job_id, tag) == (None, tag)
        job = client.wait(job_id, timeout=20, poll_s=0.05)
    finisher.join()
    assert job["state"] == "succeeded"
    polls = [code for path, code in seen if path.endswith("/status")]
    full = [code for path, code in seen if path == f"/v1/jobs/{job_id}"]
    assert polls.count(304) >= 3 and len(full) == 2, seen  # the first reading and the final one


def test_a_status_poll_is_one_statement(api: Api) -> None:
    """The key check rides in the status select: no second lookup (the unknown-query check made one for
    every /v1 request), while an unknown parameter still gets the key checked first."""
    from sqlalchemy import event

    job_id = insert_job(api, dataset_id(api), "running", phase="structural")
    path = f"/v1/jobs/{job_id}/status"
    assert api.client.get(path).status_code == 200  # pools warmed
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    engines = {id(e): e for e in (api.services.engine, api.services.read_engine) if e is not None}
    for engine in engines.values():
        event.listen(engine, "before_cursor_execute", record)
    try:
        assert api.client.get(path).status_code == 200
        assert len(statements) == 1 and "api_keys" in statements[0], statements
        assert api.client.get(f"{path}?verbose=1", headers={"Authorization": ""}).status_code == 401
        assert api.client.get(f"{path}?verbose=1").status_code == 422
    finally:
        for engine in engines.values():
            event.remove(engine, "before_cursor_execute", record)
