"""Drop broker messages of jobs that are final (or gone), so none waits out the visibility timeout.

With Redis, a message a worker took but never acknowledged (the worker was SIGKILLed, or exited after
recording a forced cancel) sits in kombu's ``unacked`` hash until the visibility timeout, which must
outlast the longest job (``max_job_time_limit_s`` + 1 h: 49 h by default), and is then delivered again
only to be dropped. Meanwhile the job was requeued under a new message and finished long ago. The
embedded SQL transport never deletes a delivered message at all (it only hides it). Cancelled queued
jobs also leave their message waiting, which inflates the queue depth the reaper compares with the
number of queued jobs before re-sending lost messages.

``discard_final_messages`` runs in every reaper pass: it reads the messages that wait or are held
unacked, asks the database which of their jobs are final or deleted, and removes exactly those messages
(by delivery tag, by exact payload, or by row id). A message of a job that is not final is never
touched, and a live worker's later ack of a removed message is a no-op in both transports.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, bindparam, create_engine, inspect, select, text

from glai_common.models import Job
from glai_common.queue import TASK_RUN_JOB, celery_config, consumed_routes
from glai_common.settings import Settings
from glai_common.states import FINAL_STATES

if TYPE_CHECKING:
    from worker.context import WorkerContext

log = logging.getLogger(__name__)
SCAN_LIMIT = 10_000  # waiting messages read per pass; the rest wait for the next pass
_DELETE = text("DELETE FROM kombu_message WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))


def job_of(payload: Any) -> str | None:
    """The job id a ``glai.run_job`` message carries (kombu's payload dict, or its JSON), else None."""
    try:
        if isinstance(payload, bytes | str):
            payload = json.loads(payload)
        if (payload.get("headers") or {}).get("task") != TASK_RUN_JOB:
            return None
        body = payload["body"]
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        args = decoded[0] if isinstance(decoded, list) else decoded.get("args")  # protocol 2, else 1
        return str(args[0]) if args else None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None  # not one of ours, or not readable: left alone


def finished_jobs(ctx: WorkerContext, job_ids: Iterable[str]) -> set[str]:
    """Of ``job_ids``, those that are final or no longer exist."""
    wanted = set(job_ids)
    if not wanted:
        return set()
    with ctx.session() as session:
        rows = session.execute(select(Job.id, Job.state).where(Job.id.in_(wanted))).all()
        states = {row.id: row.state for row in rows}
    return {job_id for job_id in wanted if states.get(job_id) in FINAL_STATES or job_id not in states}


class RedisMessages:
    """Kombu's Redis layout: the queue is a list of payloads, taken messages a hash tag -> payload."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.resolved_broker_url
        self.options = dict(celery_config(settings)["broker_transport_options"])  # type: ignore[call-overload]
        self.queues = consumed_routes(settings.queues)  # every pool's high, normal and low list

    def discard(self, ctx: WorkerContext) -> int:
        from kombu import Connection

        with Connection(self.url, transport_options=self.options) as conn:
            channel = conn.default_channel
            with channel.conn_or_acquire() as client:
                held = client.hgetall(channel.unacked_key)
                unacked = {tag: job_of(_json(raw)) for tag, raw in held.items()}
                waiting = [(queue, raw, job_of(_json(raw))) for queue in self.queues
                           for raw in client.lrange(queue, 0, SCAN_LIMIT - 1)]
                done = finished_jobs(ctx, [j for j in [*unacked.values(), *(j for _, _, j in waiting)] if j])
                tags = [tag for tag, job_id in unacked.items() if job_id in done]
                raws = [(queue, raw) for queue, raw, job_id in waiting if job_id in done]
                if not tags and not raws:
                    return 0
                pipe = client.pipeline()
                for tag in tags:
                    pipe.zrem(channel.unacked_index_key, tag).hdel(channel.unacked_key, tag)
                for queue, raw in raws:
                    pipe.lrem(queue, 1, raw)
                pipe.execute()
        return len(tags) + len(raws)


def _json(raw: bytes | str) -> Any:
    """An unacked entry is ``[payload, exchange, routing_key]``; a waiting one is the payload."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value[0] if isinstance(value, list) and value else value


class SqlMessages:
    """Kombu's SQLAlchemy transport (the embedded ``sqla+sqlite://`` broker): one row per message,
    hidden (``visible`` false) once delivered and never deleted by kombu itself."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.resolved_broker_url.removeprefix("sqla+")
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            args = {"timeout": 5} if self.url.startswith("sqlite") else {}
            self._engine = create_engine(self.url, connect_args=args)
        return self._engine

    def discard(self, ctx: WorkerContext) -> int:
        if not inspect(self.engine).has_table("kombu_message"):
            return 0  # nothing was ever sent
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, payload FROM kombu_message ORDER BY id LIMIT :n"),
                                {"n": SCAN_LIMIT}).all()
        owners = {row.id: job_of(row.payload) for row in rows}
        done = finished_jobs(ctx, [job_id for job_id in owners.values() if job_id])
        ids = [row_id for row_id, job_id in owners.items() if job_id in done]
        if ids:
            with self.engine.begin() as conn:
                for start in range(0, len(ids), 500):
                    conn.execute(_DELETE, {"ids": ids[start:start + 500]})
        return len(ids)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def message_sweeper(settings: Settings) -> Callable[[WorkerContext], int] | None:
    """The broker's ``discard`` for this deployment, or None where there is nothing to clean (memory)."""
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        return RedisMessages(settings).discard
    if url.startswith("sqla+"):
        return SqlMessages(settings).discard
    return None
