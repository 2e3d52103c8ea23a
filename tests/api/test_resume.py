"""POST /v1/jobs/{id}/resume: a failed job with attempts left goes back to queued (and to the workers);
everything else is a 409 naming the reason, and nothing changes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from glai_common.models import Job
from tests.api.helpers import Api, dataset_id, insert_job


def _failed(api: Api, kind: str = "timeout", attempts: int = 1) -> str:
    job = insert_job(api, dataset_id(api), "failed", phase="structural")
    with api.session() as session:
        session.execute(update(Job).where(Job.id == job).values(
            failure_kind=kind, failure_message="the job exceeded its time limit", attempts=attempts,
            summary={"partial": True}))
        session.commit()
    return job


def _resume(api: Api, job: str, body: dict[str, Any] | None = None) -> Any:
    return api.client.post(f"/v1/jobs/{job}/resume", json=body)


def test_a_timed_out_job_is_queued_again_and_sent(api: Api) -> None:
    job = _failed(api)
    response = _resume(api, job, {"time_limit_s": 120})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["state"], body["failure_kind"], body["summary"], body["time_limit_s"]) == \
        ("queued", None, {}, 120)
    last = body["transitions"][-1]
    assert last["from_value"] == "failed" and last["to_value"] == "queued" and "resumed" in last["reason"]
    assert api.enqueued == [job]
    assert _resume(api, _failed(api)).status_code == 202  # no body: its own limit again


def test_what_cannot_be_resumed_is_refused_and_left_alone(api: Api) -> None:
    ds = dataset_id(api)
    for state in ("queued", "running", "succeeded", "cancelled"):
        job = insert_job(api, ds, state)
        response = _resume(api, job)
        assert response.status_code == 409 and state in response.json()["detail"], response.text
    user_error = _failed(api, kind="user_error")
    assert "submit a new job" in _resume(api, user_error).json()["detail"]
    spent = _failed(api, attempts=api.services.settings.max_job_attempts)
    assert "attempts" in _resume(api, spent).json()["detail"]
    too_long = _resume(api, _failed(api), {"time_limit_s": api.services.settings.max_job_time_limit_s + 1})
    assert too_long.status_code == 422 and too_long.json()["field"] == "time_limit_s"
    unknown = _resume(api, _failed(api), {"time_limit": 5})
    assert unknown.status_code == 422
    assert _resume(api, "0" * 32).status_code == 404
    with api.session() as session:
        assert session.get(Job, user_error).state == "failed"  # type: ignore[union-attr]
        assert session.get(Job, spent).state == "failed"  # type: ignore[union-attr]
    assert api.enqueued == []


def test_another_owners_job_is_not_found(api: Api) -> None:
    job = _failed(api)
    other = api.client.post(f"/v1/jobs/{job}/resume", headers={"Authorization": f"Bearer {api.new_key()}"})
    assert other.status_code == 404
