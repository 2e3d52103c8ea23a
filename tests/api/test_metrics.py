"""GET /metrics: the Prometheus text format, read back with the official client's text parser, on a
database of its own (the counts are fleet-wide) on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from glai_common import jobs as job_repo
from glai_common import metrics_store
from glai_common.migrate import upgrade
from tests.api.helpers import Api, dataset_id, submit
from tests.conftest import fresh_postgres_database

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'metrics.db'}"
        upgrade(url)
        yield url
        return
    with fresh_postgres_database("glai_metrics") as url:
        upgrade(url)
        yield url


def scrape(api: Api, **headers: str) -> tuple[Samples, dict[str, str]]:
    response = api.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_parse_and_count_the_fleet(make_api: Callable[..., Api], own_database: str) -> None:
    api = make_api(database_url=own_database, queues=["glai", "cpu"], webhook_allow_private=True)
    ds = dataset_id(api)
    hook = {"webhook_url": "http://127.0.0.1:9/hook"}
    high = submit(api, ds, priority="high").json()["id"]
    submit(api, ds, priority="low")
    submit(api, ds, queue="cpu")
    cancelled = submit(api, ds, notify=hook).json()["id"]
    api.client.post(f"/v1/jobs/{cancelled}/cancel")
    with api.session() as session:  # one job runs two phases and succeeds, as a worker would record it
        job_repo.claim_job(session, high, "w1")
        session.commit()
        metrics_store.observe(session, metrics_store.PHASE, "structural", 42.0)
        metrics_store.observe(session, metrics_store.PHASE, "structural", 0.5)
        metrics_store.observe(session, metrics_store.PHASE, "quantitative", 3.0)
        job_repo.finish(session, high, "w1", "succeeded", summary={})
        metrics_store.beat(session, "gpu0@host", ["glai"])
        metrics_store.beat(session, "cpu0@host", ["cpu"])
        session.commit()
    api.client.get(f"/v1/jobs/{high}")
    api.client.get("/v1/no/such/path")

    samples, types = scrape(api)
    assert value(samples, "glai_jobs", state="queued", queue="glai") == 1
    assert value(samples, "glai_jobs", state="queued", queue="cpu") == 1
    assert value(samples, "glai_jobs", state="succeeded", queue="glai") == 1
    assert value(samples, "glai_jobs", state="cancelled", queue="glai") == 1
    assert value(samples, "glai_jobs", state="running", queue="glai") == 0
    assert value(samples, "glai_queue_depth", queue="glai", priority="low") == 1
    assert value(samples, "glai_queue_depth", queue="glai", priority="high") == 0
    assert value(samples, "glai_queue_depth", queue="cpu", priority="normal") == 1

    assert types["glai_job_duration_seconds"] == "histogram"
    assert value(samples, "glai_job_duration_seconds_count", state="succeeded") == 1
    assert "cancelled" not in {dict(labels).get("state") for name, labels in samples
                               if name == "glai_job_duration_seconds_count"}  # it never ran
    assert value(samples, "glai_phase_duration_seconds_count", phase="structural") == 2
    assert value(samples, "glai_phase_duration_seconds_sum", phase="structural") == pytest.approx(42.5)
    assert value(samples, "glai_phase_duration_seconds_bucket", phase="structural", le="1.0") == 1
    assert value(samples, "glai_phase_duration_seconds_bucket", phase="structural", le="30.0") == 1
    assert value(samples, "glai_phase_duration_seconds_bucket", phase="structural", le="60.0") == 2
    assert value(samples, "glai_phase_duration_seconds_bucket", phase="structural", le="+Inf") == 2

    assert value(samples, "glai_workers_alive", queue="glai") == 1
    assert value(samples, "glai_workers_alive", queue="cpu") == 1
    assert value(samples, "glai_worker_last_heartbeat_timestamp_seconds", worker="gpu0@host") > 1.7e9
    assert value(samples, "glai_running_job_heartbeat_age_seconds", queue="glai") == 0
    assert value(samples, "glai_webhook_deliveries", state="pending") == 1
    assert value(samples, "glai_webhook_deliveries", state="delivered") == 0

    assert types["glai_http_request_duration_seconds"] == "histogram"
    latency = "glai_http_request_duration_seconds_count"
    assert value(samples, latency, method="GET", route="/v1/jobs/{job_id}", status="200") == 1
    assert value(samples, latency, method="POST", route="/v1/jobs", status="202") == 4
    assert value(samples, latency, method="GET", route="unmatched", status="404") == 1
    assert not any(high in str(labels) for _, labels in samples)  # templates, never ids


def test_a_metrics_token_guards_the_endpoint(make_api: Callable[..., Api], own_database: str) -> None:
    api = make_api(database_url=own_database, metrics_token="s3cret")
    refused = api.client.get("/metrics")
    assert refused.status_code == 401 and refused.json()["field"] == "Authorization"
    assert api.client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    samples, _ = scrape(api, Authorization="Bearer s3cret")
    assert value(samples, "glai_jobs", state="queued", queue="glai") == 0
    open_api = make_api(database_url=own_database)
    assert open_api.client.get("/metrics", headers={"Authorization": ""}).status_code == 200
