"""Cancel at random points under a real worker: while queued, and in each phase while running. The final
state is cancelled (or succeeded when the job finished first), recorded exactly once."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from glai_common import jobs
from glai_common.models import JobTransition
from tests.reliability.harness import FINAL, RedisServer, Stack, audit
from tests.worker.harness import insert_digits_job, job_state, tiny_config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

# Every phase lasts long enough to be caught by polling (on two shared cores).
# Epoch counts, not seconds: the loop is fast on digits, so each phase is made long by its epoch budget
# (first-order phase 2 without early stopping: a closed form or patience would end it at once).
PHASED = tiny_config(structural={"max_epochs": 200, "threshold": 0.0, "batch_size": 64},
                     quantitative={"solver": "adam", "epochs": 200, "batch_size": 64, "patience": 1000},
                     pruning={"sparsities": [0.2, 0.4, 0.6], "finetune_epochs": 30},
                     baseline={"max_epochs": 200, "batch_size": 64, "patience": 1000})
TARGETS = ("structural", "quantitative", "pruning", "baseline", "exporting")


def _cancel(stack: Stack, job_id: str) -> None:
    with stack.sessions.begin() as session:
        jobs.request_cancel(session, job_id, reason="cancel requested by the test")


def test_cancel_at_random_points(postgres_url: str, private_redis: RedisServer,
                                 make_stack: Callable[..., Stack]) -> None:
    rng = random.Random(1234)
    stack = make_stack(postgres_url, private_redis.url)
    # Queued: cancelled at once, never claimed, and the delivered message is dropped.
    queued = insert_digits_job(stack.sessions, stack.storage_dir, PHASED)
    stack.enqueue(queued)
    _cancel(stack, queued)
    worker = stack.start_worker()
    outcomes: dict[str, tuple[str, str | None]] = {}
    for target in TARGETS:
        job_id = insert_digits_job(stack.sessions, stack.storage_dir, PHASED)
        stack.enqueue(job_id)
        wait_for(lambda j=job_id, t=target: (job := job_state(stack.sessions, j)).phase == t
                 or TARGETS.index(job.phase or "structural") > TARGETS.index(t) or job.state in FINAL,
                 60, f"phase {target}", worker, interval=0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        phase = job_state(stack.sessions, job_id).phase
        _cancel(stack, job_id)
        state = stack.wait_state(job_id, FINAL, 30, worker)
        outcomes[job_id] = (state, phase)
    print("cancel outcomes (final state, phase when cancelled):", list(outcomes.values()))
    job = job_state(stack.sessions, queued)
    assert job.state == "cancelled" and job.attempts == 0
    for job_id, (state, _) in outcomes.items():
        assert state in ("cancelled", "succeeded"), (state, stack.log(job_id)[-5:])
        audit(stack, job_id)  # exactly one final state, one attempt
        job = job_state(stack.sessions, job_id)
        assert job.attempts == 1 and job.failure_kind is None
        with stack.sessions() as session:
            trail = list(session.scalars(select(JobTransition.to_value).where(
                JobTransition.job_id == job_id, JobTransition.field == "state").order_by(JobTransition.id)))
        if state == "cancelled":
            assert trail == ["running", "cancelling", "cancelled"], trail
    assert sum(state == "cancelled" for state, _ in outcomes.values()) >= 3, outcomes
    with stack.sessions() as session:  # nothing was left half-way
        assert session.scalar(select(func.count()).select_from(JobTransition)
                              .where(JobTransition.to_value == "cancelling")) == sum(
            1 for state, _ in outcomes.values() if state == "cancelled") + sum(
            1 for job_id, (state, _) in outcomes.items() if state == "succeeded"
            and "cancelling" in _trail(stack, job_id))


def _trail(stack: Stack, job_id: str) -> list[str]:
    with stack.sessions() as session:
        return list(session.scalars(select(JobTransition.to_value).where(
            JobTransition.job_id == job_id, JobTransition.field == "state")))
