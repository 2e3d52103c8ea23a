"""Webhooks end to end: real ``glai worker`` processes deliver to a real HTTP receiver on loopback, on the
embedded setup (SQLite + the SQL broker) and on PostgreSQL + Redis.

* the body is signed: HMAC-SHA256 over ``t.body`` with the owner's secret, recomputed here;
* a receiver that fails twice gets the third attempt, after growing waits, and the delivery is listed on
  the job with three attempts; one that always fails gets exactly ``webhook_max_attempts``;
* failed and cancelled jobs are announced too;
* a worker killed after the job is final, while its delivery is in flight, does not lose it: the next
  worker sends the same delivery again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from glai_common import webhooks
from glai_common.jobs import request_cancel
from glai_common.models import Job, WebhookDelivery
from tests.worker.fleet import Fleet, Receiver, fleet_backend, set_job, until
from tests.worker.harness import insert_digits_job, job_state, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FAST = {"webhook_allow_private": "true", "webhook_retry_base_s": "0.5", "webhook_poll_interval_s": "0.2",
        "webhook_timeout_s": "2", "webhook_max_attempts": "3"}


@pytest.fixture(params=["sqlite", "redis-postgres"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    backend = fleet_backend(request, tmp_path)
    backend.extra_env.update({f"GLAI_{k.upper()}": v for k, v in FAST.items()})
    deployment = Fleet(backend)
    yield deployment
    deployment.close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def _job(fleet: Fleet, url: str, **config: object) -> str:
    job_id = insert_digits_job(fleet.sessions, fleet.storage_dir, tiny_config(**config))  # type: ignore[arg-type]
    set_job(fleet.sessions, job_id, webhook_url=url)
    return job_id


def _secret(fleet: Fleet) -> str:
    with fleet.sessions() as session:
        return webhooks.secret_for(session, "alice").secret


def _signed(secret: str, request_body: bytes, header: str) -> bool:
    """The documented check, written out: t=<unix>,v1=HMAC-SHA256(secret, "<t>." + body)."""
    fields = dict(item.split("=", 1) for item in header.split(","))
    signed = f"{fields['t']}.".encode() + request_body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 120


def _deliveries(fleet: Fleet, job_id: str) -> list[WebhookDelivery]:
    with fleet.sessions() as session:
        return webhooks.deliveries_of(session, job_id)


def test_signed_retried_and_bounded(fleet: Fleet, receivers: list[Receiver]) -> None:
    flaky = Receiver(answers=[500, 503, 200])
    broken = Receiver(answers=[500])
    receivers += [flaky, broken]
    ok_job = _job(fleet, flaky.url)
    failing_job = _job(fleet, broken.url, pruning={"enabled": False}, baseline={"enabled": False})
    for job_id in (ok_job, failing_job):
        fleet.enqueue(job_id)
    fleet.start_worker()

    until(lambda: flaky.count() >= 3 and broken.count() >= 3, 120, "three attempts at each receiver", fleet)
    until(lambda: [d.state for d in _deliveries(fleet, ok_job)] == ["delivered"], 10, "delivered", fleet)
    until(lambda: [d.state for d in _deliveries(fleet, failing_job)] == ["failed"], 10, "given up", fleet)
    time.sleep(1.5)  # more than the next backoff would have been: no fourth attempt comes
    assert flaky.count() == 3 and broken.count() == 3

    secret = _secret(fleet)
    first = flaky.requests[0]
    assert all(r.body == first.body for r in flaky.requests)  # the same bytes on every attempt
    for attempt, received in enumerate(flaky.requests, 1):
        assert _signed(secret, received.body, received.headers[webhooks.SIGNATURE_HEADER])
        assert webhooks.verify(secret, received.body, received.headers[webhooks.SIGNATURE_HEADER])
        assert received.headers[webhooks.ATTEMPT_HEADER] == str(attempt)
    assert not _signed("whsec_wrong", first.body, first.headers[webhooks.SIGNATURE_HEADER])
    assert not webhooks.verify(secret, first.body + b" ", first.headers[webhooks.SIGNATURE_HEADER])
    gaps = [b.at - a.at for a, b in zip(flaky.requests, flaky.requests[1:], strict=False)]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.9 and gaps[1] > gaps[0], gaps  # 0.5 s, then 1 s

    body = first.json()
    assert body["event"] == "job.succeeded" and first.headers[webhooks.EVENT_HEADER] == "job.succeeded"
    assert body["job"]["id"] == ok_job and body["job"]["state"] == "succeeded"
    assert body["job"]["summary"]["glai_accuracy"] > 0.5
    (delivery,) = _deliveries(fleet, ok_job)
    assert body["delivery_id"] == delivery.id == first.headers[webhooks.DELIVERY_HEADER]
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (3, 200, None)
    (gave_up,) = _deliveries(fleet, failing_job)
    assert gave_up.attempts == 3 and gave_up.last_status_code == 500
    assert "HTTP 500" in (gave_up.last_error or "")
    assert job_state(fleet.sessions, failing_job).state == "succeeded"  # the job itself is unaffected


def test_failed_and_cancelled_jobs_are_announced(fleet: Fleet, receivers: list[Receiver]) -> None:
    receiver = Receiver()
    receivers.append(receiver)
    broken = _job(fleet, receiver.url)
    with fleet.sessions.begin() as session:  # a request the worker refuses: failed as user_error
        session.get(Job, broken).spec = {"config": "not a config"}  # type: ignore[union-attr]
    queued = _job(fleet, receiver.url)
    with fleet.sessions.begin() as session:  # cancelled before any worker saw it (as the API does)
        request_cancel(session, queued)
    fleet.enqueue(broken)
    fleet.start_worker()

    until(lambda: receiver.count() >= 2, 60, "two notifications", fleet)
    events = sorted((r.json()["job"]["id"], r.json()["event"]) for r in receiver.requests)
    assert events == sorted([(broken, "job.failed"), (queued, "job.cancelled")])
    failed = next(r.json() for r in receiver.requests if r.json()["event"] == "job.failed")
    assert failed["job"]["failure_kind"] == "user_error"


def test_a_worker_killed_during_the_delivery_does_not_lose_it(fleet: Fleet,
                                                              receivers: list[Receiver]) -> None:
    """The job is final and its delivery in flight (the receiver holds the request) when the worker is
    SIGKILLed; the delivery row outlives it, and the next worker sends it once its lease has run out."""
    receiver = Receiver(hold_first=True)
    receivers.append(receiver)
    job_id = _job(fleet, receiver.url)
    fleet.enqueue(job_id)
    first = fleet.start_worker()
    assert receiver.arrived.wait(120), fleet.output()
    assert job_state(fleet.sessions, job_id).state == "succeeded"
    first.kill()
    receiver.release.set()  # its answer goes to a dead socket
    (pending,) = _deliveries(fleet, job_id)
    assert pending.state == "pending" and pending.attempts == 1

    fleet.start_worker()
    until(lambda: [d.state for d in _deliveries(fleet, job_id)] == ["delivered"], 60, "redelivery", fleet)
    assert receiver.count() == 2
    (delivery,) = _deliveries(fleet, job_id)
    assert delivery.attempts == 2
    again, original = receiver.requests[1], receiver.requests[0]
    delivered_as = {again.headers[webhooks.DELIVERY_HEADER], original.headers[webhooks.DELIVERY_HEADER]}
    assert delivered_as == {delivery.id}
    assert again.body == original.body and _signed(_secret(fleet), again.body,
                                                    again.headers[webhooks.SIGNATURE_HEADER])
    with fleet.sessions() as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
    assert json.loads(again.body)["job"]["state"] == "succeeded"
