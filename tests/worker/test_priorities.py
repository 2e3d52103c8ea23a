"""Priorities and pools with real ``glai worker`` processes, on the embedded SQL broker and on Redis.

Jobs queued before any worker runs are taken high, then normal, then low, whatever order they were sent
in; a job for another pool waits for a worker of that pool, and a CPU-only worker (``--cpu``) started for
it runs it on the CPU. The reaper re-sends a lost message to the job's own queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from glai_common import jobs
from tests.worker.fleet import Fleet, fleet_backend, set_job, until
from tests.worker.harness import insert_digits_job, job_state, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
QUICK = tiny_config(pruning={"enabled": False}, baseline={"enabled": False})


@pytest.fixture(params=["sqlite", "redis-postgres"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    backend = fleet_backend(request, tmp_path)
    backend.extra_env["GLAI_QUEUES"] = "glai,cpu"
    deployment = Fleet(backend)
    yield deployment
    deployment.close()


def _queued(fleet: Fleet, queue: str = "glai", priority: str = "normal") -> str:
    job_id = insert_digits_job(fleet.sessions, fleet.storage_dir, QUICK)
    set_job(fleet.sessions, job_id, queue=queue, priority=priority)
    return job_id


def _log(fleet: Fleet, job_id: str) -> list[str]:
    with fleet.sessions() as session:
        return [line.text for line in jobs.read_log(session, job_id)]


def test_high_before_normal_before_low_and_pools_apart(fleet: Fleet) -> None:
    low, normal_1, cpu_job, high, normal_2, high_2 = (
        _queued(fleet, priority="low"), _queued(fleet), _queued(fleet, queue="cpu"),
        _queued(fleet, priority="high"), _queued(fleet), _queued(fleet, priority="high"))
    for job_id in (low, normal_1, cpu_job, high, normal_2, high_2):  # sent in this order
        fleet.enqueue(job_id)
    gpu_pool = fleet.start_worker(queues="glai")
    mine = [low, normal_1, high, normal_2, high_2]
    until(lambda: all(job_state(fleet.sessions, j).state == "succeeded" for j in mine), 180,
          "the glai pool's jobs", fleet)
    started = sorted(mine, key=lambda j: job_state(fleet.sessions, j).started_at)
    assert started == [high, high_2, normal_1, normal_2, low], fleet.output()
    assert job_state(fleet.sessions, cpu_job).state == "queued"  # no worker serves its pool yet

    cpu_pool = fleet.start_worker(queues="cpu", cpu=True)
    until(lambda: job_state(fleet.sessions, cpu_job).state == "succeeded", 120, "the cpu job", fleet)
    assert "device cpu" in _log(fleet, cpu_job)
    assert gpu_pool.proc.poll() is None and cpu_pool.proc.poll() is None
    _check_metrics(fleet)


def _check_metrics(fleet: Fleet) -> None:
    """What the workers recorded, as the API's /metrics shows it: every phase they ran, each job's
    duration, both pools alive."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from api.main import create_app
    from glai_common.settings import Settings

    settings = Settings(database_url=fleet.backend.database_url, broker_url="memory://",
                        data_dir=fleet.backend.data_dir, auth_enabled=False, queues=["glai", "cpu"],
                        worker_lease_s=60)
    app = create_app(settings, enqueue=lambda _job_id: None)
    with TestClient(app) as client:
        text = client.get("/metrics").text
    app.state.services.engine.dispose()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("glai_job_duration_seconds_count", (("state", "succeeded"),))] == 6
    for phase in ("structural", "quantitative", "exporting"):  # per attempt: a lease lost under load
        assert samples[("glai_phase_duration_seconds_count", (("phase", phase),))] >= 6, phase  # adds one
    assert samples[("glai_workers_alive", (("queue", "glai"),))] == 1
    assert samples[("glai_workers_alive", (("queue", "cpu"),))] == 1
    assert samples[("glai_jobs", (("queue", "cpu"), ("state", "succeeded")))] == 1


def test_a_lost_message_is_sent_again_to_the_jobs_own_queue(fleet: Fleet) -> None:
    """The reaper's re-send (a message lost between commit and send) must reach the job's pool: sent to
    the default queue it would wait forever for a worker that never reads there."""
    job_id = _queued(fleet, queue="cpu", priority="low")  # committed, never sent
    fleet.start_worker(queues="cpu", cpu=True, requeue_stale_queued_s="1", reaper_interval_s="0.5")
    until(lambda: job_state(fleet.sessions, job_id).state == "succeeded", 120, "the re-sent job", fleet)
    assert any("sent to the queue again" in line for line in _log(fleet, job_id))
