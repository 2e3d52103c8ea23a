"""Broker and database faults under real worker processes.

* Redis (no persistence) crashes and restarts while one job runs and two wait in the queue: the running
  one goes on (its truth is in PostgreSQL), the lost messages are re-sent by the reaper, all three finish
  once, and the worker is still alive.
* A job committed but never sent (the API died between commit and send) is found and sent.
* PostgreSQL unreachable from the worker (a proxy cut) mid-training for longer than the lease, and then
  while a job is being claimed: both jobs finish once; readiness answers 503 meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.reliability.harness import FINAL, RedisServer, Stack, TcpProxy, audit
from tests.worker.harness import insert_digits_job, job_state, tiny_config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

LONG = tiny_config(structural={"max_epochs": 400, "threshold": 0.0, "batch_size": 64},
                   pruning={"enabled": False})
SHORT = tiny_config(pruning={"enabled": False})


def _resent(stack: Stack, job_id: str) -> bool:
    return any("sent to the queue again" in line for line in stack.log(job_id))


def test_redis_restart_with_jobs_running_and_queued(postgres_url: str, private_redis: RedisServer,
                                                    make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(postgres_url, private_redis.url)
    running = insert_digits_job(stack.sessions, stack.storage_dir, LONG)
    queued = [insert_digits_job(stack.sessions, stack.storage_dir, SHORT) for _ in range(2)]
    for job_id in (running, *queued):
        stack.enqueue(job_id)
    worker = stack.start_worker()
    wait_for(lambda: len(stack.steps(running)) >= 3, 40, "the first job training", worker)
    private_redis.restart(down_s=1.5)  # every queued message is gone
    for job_id in (running, *queued):
        assert stack.wait_state(job_id, FINAL, 60, worker) == "succeeded", stack.worker_output()
    for job_id in (running, *queued):
        assert len(audit(stack, job_id)) == 1  # one attempt each: nothing ran twice
    assert all(_resent(stack, job_id) for job_id in queued)
    assert worker.proc.poll() is None  # reconnected instead of exiting
    # Still consuming after the restart: a fresh job sent now runs without any re-send.
    later = insert_digits_job(stack.sessions, stack.storage_dir, SHORT)
    stack.enqueue(later)
    assert stack.wait_state(later, FINAL, 40, worker) == "succeeded"
    assert not _resent(stack, later)


def test_a_job_committed_but_never_sent_is_sent_by_the_reaper(postgres_url: str, private_redis: RedisServer,
                                                              make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(postgres_url, private_redis.url)
    job_id = insert_digits_job(stack.sessions, stack.storage_dir, SHORT)  # no enqueue: the "crash"
    worker = stack.start_worker()
    state = stack.wait_state(job_id, FINAL, 40, worker)
    job = job_state(stack.sessions, job_id)
    assert state == "succeeded", (job.failure_kind, job.failure_message, stack.log(job_id)[-8:])
    assert _resent(stack, job_id) and len(audit(stack, job_id)) == 1


def _readiness(database_url: str, broker_url: str) -> int:
    """The API's readiness probe, against the same path the worker uses to reach the database."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from glai_common.settings import Settings

    app = create_app(Settings(database_url=database_url, broker_url=broker_url, auth_enabled=False))
    with TestClient(app) as client:
        return client.get("/readyz").status_code


def test_postgres_unreachable_mid_job_and_at_claim(pg_proxy: tuple[TcpProxy, str], postgres_url: str,
                                                   private_redis: RedisServer,
                                                   make_stack: Callable[..., Stack]) -> None:
    proxy, proxied_url = pg_proxy
    stack = make_stack(postgres_url, private_redis.url, worker_database_url=proxied_url)
    first = insert_digits_job(stack.sessions, stack.storage_dir, LONG)
    stack.enqueue(first)
    worker = stack.start_worker()
    wait_for(lambda: len(stack.steps(first)) >= 3, 40, "the first job training", worker)
    proxy.cut()
    try:
        ready = _readiness(proxied_url, private_redis.url)
        time.sleep(4.5)  # longer than the 3 s lease: the job may be reaped when the database returns
    finally:
        proxy.restore()
    assert ready == 503
    assert stack.wait_state(first, FINAL, 60, worker) == "succeeded", stack.worker_output()
    attempts = audit(stack, first)
    assert 1 <= len(attempts) <= 2, attempts
    assert _readiness(proxied_url, private_redis.url) == 200

    # Unreachable while the next job is claimed: the task retries with backoff, then runs it once.
    proxy.cut()
    try:
        second = insert_digits_job(stack.sessions, stack.storage_dir, SHORT)
        stack.enqueue(second)
        time.sleep(3)
        assert stack.state(second) == "queued"
    finally:
        proxy.restore()
    assert stack.wait_state(second, FINAL, 60, worker) == "succeeded", stack.worker_output()
    assert len(audit(stack, second)) == 1
    assert job_state(stack.sessions, second).failure_kind is None
