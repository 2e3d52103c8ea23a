"""The Celery task: a thin shell around ``pipeline_runner.execute_job``.

The message carries only the job id; everything else is read from the database. The context (engine,
storage) is built lazily in the process that runs the task, i.e. after the prefork pool forked.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from glai_common.queue import TASK_RUN_JOB
from glai_common.settings import get_settings
from worker.celery_app import app
from worker.context import WorkerContext
from worker.pipeline_runner import DB_UNAVAILABLE, execute_job

# Set on warm shutdown (solo pool: same process): the running job stops at its next step, keeps its
# checkpoint and releases its lease, so another worker resumes it without waiting for the lease to expire.
shutdown_requested = threading.Event()


@lru_cache
def task_context() -> WorkerContext:
    return WorkerContext.from_settings(get_settings())


# Only database outages escape execute_job (while claiming, handing back or writing the final state):
# retry the message with backoff instead of dropping it. Should the retries run out, the job is not lost
# either: a running one's lease expires (the reaper requeues it), a queued one is re-sent as stale.
@app.task(name=TASK_RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
          autoretry_for=DB_UNAVAILABLE, retry_backoff=True, retry_backoff_max=60, max_retries=30)
def run_job(job_id: str) -> str:
    return execute_job(task_context(), job_id, shutdown=shutdown_requested)
