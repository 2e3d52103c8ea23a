"""Celery configuration shared by the API (which only sends) and the worker (which also consumes).

The API never imports ``worker``: it sends the task by name with ``enqueue_job`` once the job row has
committed, carrying only the job id. Everything else the worker reads from the database.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from glai_common.settings import Settings, get_settings

TASK_RUN_JOB = "glai.run_job"
QUEUE = "glai"


def celery_config(settings: Settings) -> dict[str, object]:
    # The broker must not redeliver a long job while it is still running: the visibility timeout
    # stays above the longest allowed job. Lost workers are detected by the database lease instead.
    # Only transports that redeliver unacked messages take the option; kombu's SQLAlchemy transport
    # passes its transport options to create_engine, which rejects unknown keys.
    visibility = settings.max_job_time_limit_s + 3600
    broker_url = settings.resolved_broker_url
    redelivering = broker_url.startswith(("redis://", "rediss://", "sentinel://", "sqs://"))
    return {
        "broker_url": broker_url,
        "result_backend": None,  # nothing reads Celery's result backend for truth: the database is
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": visibility} if redelivering else {},
        "broker_connection_retry_on_startup": True,
        "task_track_started": False,
        "worker_hijack_root_logger": False,
    }


def make_celery(name: str = "glai", settings: Settings | None = None) -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings or get_settings()))
    return app


@lru_cache
def celery_client() -> Celery:
    return make_celery("glai-client")


def enqueue_job(job_id: str) -> None:
    """Send the job to the workers. Call only after the job row is committed."""
    celery_client().send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE)
