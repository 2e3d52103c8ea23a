"""Priority, queue and notify.webhook_url on POST /v1/jobs: stored and returned; every bad value is a 422
naming its field that stores nothing (no job, no idempotency key, no webhook secret, nothing enqueued);
the owner's webhook secret; a queued job cancelled through the API gets its delivery row at once."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select

from glai_common.models import IdempotencyKey, Job, WebhookDelivery, WebhookSecret
from glai_common.queue import route, routed_enqueue
from tests.api.helpers import Api, dataset_id, submit


def _stored(api: Api) -> tuple[int, int, int]:
    with api.session() as session:
        counts = [session.scalar(select(func.count()).select_from(table).where(table.owner == api.owner))
                  for table in (Job, IdempotencyKey, WebhookSecret)]
    return int(counts[0] or 0), int(counts[1] or 0), int(counts[2] or 0)


def test_priority_and_queue_are_stored_returned_and_routed(make_api: Callable[..., Api]) -> None:
    api = make_api(queues=["glai", "cpu"])
    ds = dataset_id(api)
    plain = submit(api, ds).json()
    assert (plain["queue"], plain["priority"], plain["notify"]) == ("glai", "normal", None)
    job = submit(api, ds, queue="cpu", priority="high").json()
    assert (job["queue"], job["priority"]) == ("cpu", "high")
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["queue"] == "cpu"
    items = api.client.get("/v1/jobs").json()["items"]
    listed = {item["id"]: (item["queue"], item["priority"]) for item in items}
    assert listed == {plain["id"]: ("glai", "normal"), job["id"]: ("cpu", "high")}
    sent: list[tuple[str, str]] = []
    enqueue = routed_enqueue(api.services.sessions, send=lambda job_id, queue: sent.append((job_id, queue)))
    enqueue(job["id"])
    enqueue(plain["id"])
    assert sent == [(job["id"], "cpu.high"), (plain["id"], "glai")]
    assert route("cpu", "low") == "cpu.low"


BAD = [
    ({"priority": "urgent"}, "priority"),
    ({"priority": 1}, "priority"),
    ({"priority": None}, "priority"),
    ({"queue": "GPU A100"}, "queue"),
    ({"queue": "gpu.a100"}, "queue"),  # dots are the priority suffix
    ({"queue": ""}, "queue"),
    ({"queue": "x" * 64}, "queue"),
    ({"queue": "gpu-h100"}, "queue"),  # well formed, but no such pool here
    ({"queue": 3}, "queue"),
    ({"notify": {"webhook_url": "ftp://hooks.example.com/x"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "hooks.example.com/x"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "https://"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "https://user:pw@93.184.215.14/x"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "https://93.184.215.14/x#frag"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "https://93.184.215.14:99999/x"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "https://93.184.215.14/a b"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://127.0.0.1:8000/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://localhost/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://10.1.2.3/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://192.168.0.10/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://169.254.169.254/latest/meta-data"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://100.64.0.1/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://[::1]/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://[::ffff:127.0.0.1]/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://[fd00::1]/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://0.0.0.0/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://224.0.0.1/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "http://no-such-host.invalid/hook"}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "https://93.184.215.14/" + "x" * 2100}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": 5}}, "notify.webhook_url"),
    ({"notify": {}}, "notify.webhook_url"),
    ({"notify": {"webhook_url": "https://93.184.215.14/x", "secret": "mine"}}, "notify.secret"),
    ({"notify": "https://93.184.215.14/x"}, "notify"),
]


def test_bad_routing_is_a_422_naming_the_field_and_stores_nothing(make_api: Callable[..., Api]) -> None:
    api = make_api(queues=["glai", "cpu"])
    ds = dataset_id(api)
    before = _stored(api)
    assert before == (0, 0, 0)
    for body, field in BAD:
        response = submit(api, ds, key="routing-1", **body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()
        assert error["field"] == field and error["detail"].startswith(f"{field}: "), (body, error)
        assert _stored(api) == before and api.enqueued == [], body


def test_private_targets_only_when_the_operator_allows_them(make_api: Callable[..., Api]) -> None:
    refused = make_api()
    response = submit(refused, dataset_id(refused), notify={"webhook_url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 422 and "GLAI_WEBHOOK_ALLOW_PRIVATE" in response.json()["detail"]

    api = make_api(webhook_allow_private=True)
    ds = dataset_id(api)
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "https://10.0.0.7/x?y=1"):
        response = submit(api, ds, notify={"webhook_url": url})
        assert response.status_code == 202, response.text
        assert response.json()["notify"] == {"webhook_url": url}
    for url in ("ftp://127.0.0.1/x", "http://u:p@127.0.0.1/x"):  # the rest of the rules still hold
        assert submit(api, ds, notify={"webhook_url": url}).status_code == 422


def test_a_public_address_is_accepted_and_the_secret_made_once(api: Api) -> None:
    ds = dataset_id(api)
    assert _stored(api)[2] == 0
    job = submit(api, ds, key="hook-1", notify={"webhook_url": "https://93.184.215.14/glai"}).json()
    assert job["notify"] == {"webhook_url": "https://93.184.215.14/glai"} and job["webhook_deliveries"] == []
    secret = api.client.get("/v1/webhooks/secret").json()
    assert secret["secret"].startswith("whsec_") and len(secret["secret"]) > 40
    assert api.client.get("/v1/webhooks/secret").json() == secret  # stable until rotated
    rotated = api.client.post("/v1/webhooks/secret/rotate").json()
    assert rotated["secret"] != secret["secret"]
    assert api.client.get("/v1/webhooks/secret").json()["secret"] == rotated["secret"]
    other = make_other_owner_secret(api)
    assert other != rotated["secret"]  # per owner
    # the Idempotency-Key covers the routing fields
    replay = submit(api, ds, key="hook-1", notify={"webhook_url": "https://93.184.215.14/glai"})
    assert replay.status_code == 200
    for changed in ({"notify": {"webhook_url": "https://93.184.215.14/other"}}, {},
                    {"notify": {"webhook_url": "https://93.184.215.14/glai"}, "priority": "low"}):
        assert submit(api, ds, key="hook-1", **changed).status_code == 409, changed
    plain = submit(api, ds, key="plain-1")
    assert submit(api, ds, key="plain-1", priority="normal").json()["id"] == plain.json()["id"]


def make_other_owner_secret(api: Api) -> str:
    key = api.new_key()
    response = api.client.get("/v1/webhooks/secret", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    return str(response.json()["secret"])


def test_cancelling_a_queued_job_records_its_delivery(api: Api) -> None:
    ds = dataset_id(api)
    job = submit(api, ds, notify={"webhook_url": "https://93.184.215.14/glai"}).json()
    cancelled = api.client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    (delivery,) = cancelled["webhook_deliveries"]
    assert delivery["event"] == "job.cancelled" and delivery["state"] == "pending"
    assert delivery["attempts"] == 0 and delivery["url"] == "https://93.184.215.14/glai"
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["webhook_deliveries"] == [delivery]
    with api.session() as session:
        row = session.get(WebhookDelivery, delivery["id"])
        assert row is not None and '"state":"cancelled"' in row.payload
    assert api.client.delete(f"/v1/jobs/{job['id']}").status_code == 204  # deliveries go with the job
    with api.session() as session:
        assert session.get(WebhookDelivery, delivery["id"]) is None
    plain = submit(api, ds).json()  # without notify: no row
    assert api.client.post(f"/v1/jobs/{plain['id']}/cancel").json()["webhook_deliveries"] == []
