"""SIGKILL the worker at random points (seeded) N times; the job is never lost, never run twice at once,
resumes from its checkpoints with gap-free curves, and fails as worker_lost once its attempts run out."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from tests.reliability.harness import FINAL, Stack, audit
from tests.worker.harness import insert_digits_job, job_state, tiny_config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

# Long by epoch count (the loop is fast on digits): kills land inside the structural phase.
LONG = tiny_config(structural={"max_epochs": 400, "threshold": 0.0, "batch_size": 64},
                   quantitative={"solver": "adam", "epochs": 20, "batch_size": 64},
                   baseline={"max_epochs": 20, "batch_size": 64})
KILLS = 3


def _claims(stack: Stack, job_id: str) -> int:
    return job_state(stack.sessions, job_id).attempts


def test_kill9_at_random_points_never_loses_nor_duplicates(postgres_url: str, private_redis,
                                                           make_stack: Callable[..., Stack]) -> None:
    """Kills land anywhere: while the worker starts, right after a claim, mid-phase, during export.
    With 3 kills and 3 allowed attempts the job either succeeds or fails as worker_lost."""
    rng = random.Random(20240611)
    stack = make_stack(postgres_url, private_redis.url)
    job_id = insert_digits_job(stack.sessions, stack.storage_dir, LONG)
    stack.enqueue(job_id)
    kills: list[str] = []
    for _ in range(KILLS):
        worker = stack.start_worker()
        before = _claims(stack, job_id)
        # Half of the kills wait for this worker's claim first, the rest strike blind (maybe at startup).
        if rng.random() < 0.5:
            wait_for(lambda b=before: _claims(stack, job_id) > b or stack.state(job_id) in FINAL, 40,
                     "the next claim", worker, interval=0.05)
        time.sleep(rng.uniform(0.0, 3.0))
        job = job_state(stack.sessions, job_id)
        kills.append(f"{job.state}/{job.phase}/attempt {job.attempts}")
        worker.kill()
        if job.state in FINAL:
            break
    last = stack.start_worker()
    state = stack.wait_state(job_id, FINAL, 90, last)
    job = job_state(stack.sessions, job_id)
    attempts = audit(stack, job_id)
    assert job.attempts <= 3, kills
    if state == "failed":
        assert job.failure_kind == "worker_lost" and job.attempts == 3, (job.failure_message, kills)
    else:
        assert state == "succeeded", (job.failure_kind, job.failure_message, kills, stack.worker_output())
        steps = stack.steps(job_id)
        assert steps == list(range(1, steps[-1] + 1)), steps  # resumed without gaps or repeats
    print(f"kills at {kills}; {len(attempts)} attempts; final {state}")


def test_kill9_after_every_claim_exhausts_the_attempts(postgres_url: str, private_redis,
                                                       make_stack: Callable[..., Stack]) -> None:
    """Each attempt is killed mid-training: after the last allowed one the job fails as worker_lost,
    with checkpoints resumed in between (each attempt starts past the previous one's last epoch)."""
    rng = random.Random(7)
    stack = make_stack(postgres_url, private_redis.url, max_job_attempts="2")
    job_id = insert_digits_job(stack.sessions, stack.storage_dir, LONG)
    stack.enqueue(job_id)
    killed_at: list[int] = []
    for attempt in (1, 2):
        worker = stack.start_worker()
        wait_for(lambda a=attempt: len(_steps_logged_by(stack, job_id, a)) >= 2, 40,
                 f"attempt {attempt} training", worker, interval=0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        worker.kill()
        killed_at.append(max(stack.steps(job_id)))
    reaper = stack.start_worker()
    assert stack.wait_state(job_id, FINAL, 30, reaper) == "failed"
    job = job_state(stack.sessions, job_id)
    assert job.failure_kind == "worker_lost" and job.attempts == 2
    assert "gave up after 2 attempts" in (job.failure_message or "")
    audit(stack, job_id)
    resumed = _steps_logged_by(stack, job_id, 2)
    # Attempt 2 continued after attempt 1's last checkpoint, which is at least its last stored point.
    assert resumed and resumed[0] > killed_at[0], (resumed[:3], killed_at)
    steps = stack.steps(job_id)
    # Points a checkpoint had but the database lacked were backfilled: no gap.
    assert steps == list(range(1, steps[-1] + 1))


def _steps_logged_by(stack: Stack, job_id: str, attempt: int) -> list[int]:
    """Structural steps in the log after the line of ``attempt``."""
    log = stack.log(job_id)
    start = next((i for i, line in enumerate(log) if line.startswith(f"attempt {attempt} on")), None)
    if start is None:
        return []
    return [int(line.split()[2].split("/")[0]) for line in log[start:]
            if line.startswith("[structural] step ")]
