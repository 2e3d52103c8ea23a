"""Celery configuration shared by the API (which only sends) and the worker (which also consumes).

The API never imports ``worker``: it sends the task by name with ``enqueue_job`` once the job row has
committed, carrying only the job id. Everything else the worker reads from the database.

Routing: a job names a worker pool (``jobs.queue``, one of ``GLAI_QUEUES``) and a priority. Each pool has
three broker queues, ``<pool>.high``, ``<pool>`` (normal) and ``<pool>.low``; a worker consumes them most
urgent first (``consumed_routes``), so a waiting high job is taken before any normal one. Normal keeps the
plain pool name: messages and workers from before priorities (``-Q glai``) still meet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from glai_common.settings import Settings, get_settings

TASK_RUN_JOB = "glai.run_job"
QUEUE = "glai"
PRIORITIES = ("high", "normal", "low")  # most urgent first
DEFAULT_PRIORITY = "normal"


def route(queue: str = QUEUE, priority: str = DEFAULT_PRIORITY) -> str:
    """The broker queue of a job in pool ``queue`` with ``priority``."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; one of: {', '.join(PRIORITIES)}")
    return queue if priority == DEFAULT_PRIORITY else f"{queue}.{priority}"


def consumed_routes(pools: Sequence[str]) -> list[str]:
    """The broker queues a worker serving ``pools`` consumes, in the order it should look at them: every
    pool's high queue, then every normal one, then every low one."""
    return [route(pool, priority) for priority in PRIORITIES for pool in dict.fromkeys(pools)]


def celery_config(settings: Settings) -> dict[str, object]:
    # The broker must not redeliver a long job while it is still running: the visibility timeout
    # stays above the longest allowed job. Lost workers are detected by the database lease instead.
    # Only transports that redeliver unacked messages take the option; kombu's SQLAlchemy transport
    # passes its transport options to create_engine, which rejects unknown keys.
    visibility = settings.max_job_time_limit_s + 3600
    broker_url = settings.resolved_broker_url
    redelivering = broker_url.startswith(("redis://", "rediss://", "sentinel://", "sqs://"))
    # Redis: look at the consumed queues in the order given (high first), not round robin. The embedded
    # SQL transport takes no such option; the worker installs an in-order channel for it instead
    # (worker/priority_transport.py).
    options = {"visibility_timeout": visibility, "queue_order_strategy": "priority"} if redelivering else {}
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
        "broker_transport_options": options,
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


def enqueue_job(job_id: str, queue: str = QUEUE) -> None:
    """Send the job to broker queue ``queue`` (a ``route``). Call only after the job row is committed."""
    celery_client().send_task(TASK_RUN_JOB, args=[job_id], queue=queue)


def job_route(session: Session, job_id: str) -> str:
    """The broker queue of a stored job (its pool and priority); the default for a job that is gone."""
    from glai_common.models import Job

    row = session.execute(select(Job.queue, Job.priority).where(Job.id == job_id)).first()
    if row is None:
        return QUEUE
    return route(row.queue or QUEUE, row.priority or DEFAULT_PRIORITY)


def routed_enqueue(sessions: sessionmaker[Session],
                   send: Callable[[str, str], None] = enqueue_job) -> Callable[[str], None]:
    """``enqueue(job_id)`` that sends each job to its own pool and priority, read from its row: the API's
    first send, the reaper's re-sends and a resume all route alike without carrying the route around."""

    def enqueue(job_id: str) -> None:
        with sessions() as session:
            queue = job_route(session, job_id)
        send(job_id, queue)

    return enqueue
