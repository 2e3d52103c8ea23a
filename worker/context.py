"""What a worker process needs, built from explicit settings (never from import-time globals).

Tests build one from URLs; the Celery task builds one lazily per process, after the prefork pool has
forked, so no database connection or CUDA state crosses a fork.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from glai_common.db import make_engine, unit_of_work
from glai_common.settings import Settings
from glai_common.storage import Storage, make_storage
from worker.staging import LocalStaging, StagingCache, staging_for


def broker_queue_depth(settings: Settings, timeout_s: float = 2.0) -> int | None:
    """How many messages wait in the job queues of every pool and priority (not counting ones a worker
    holds unacked).

    Used by the reaper to tell a lost message from a merely long queue; any error means "unknown"."""
    from kombu import Connection

    from glai_common.queue import celery_config, consumed_routes

    options = celery_config(settings)["broker_transport_options"]
    try:
        with Connection(settings.resolved_broker_url, connect_timeout=timeout_s,
                        transport_options=dict(options)) as conn:  # type: ignore[call-overload]
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
            channel = conn.default_channel
            return sum(int(channel.queue_declare(queue=name, passive=False).message_count)
                       for name in consumed_routes(settings.queues))
    except Exception:  # noqa: BLE001 - unknown is a valid answer
        return None


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    storage: Storage
    enqueue: Callable[[str], None]
    # Messages waiting in the job queue, or None when the broker cannot say (or is unreachable).
    queue_depth: Callable[[], int | None] = field(default=lambda: None)
    # Removes the broker messages of final jobs (worker.broker_cleanup); None: nothing to clean.
    discard_messages: Callable[[WorkerContext], int] | None = None
    sessions: sessionmaker[Session] = field(init=False)
    _staging: LocalStaging | StagingCache | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)

    @property
    def staging(self) -> LocalStaging | StagingCache:
        """Stored prefixes as local directories: the stored ones themselves (LocalStorage) or this
        machine's verified, size-bounded copies (object storage; ``worker.staging``)."""
        if self._staging is None:
            self._staging = staging_for(self.storage, self.settings.resolved_staging_dir / "cache",
                                        self.settings.staging_max_bytes)
        return self._staging

    @classmethod
    def from_settings(cls, settings: Settings, enqueue: Callable[[str], None] | None = None,
                      queue_depth: Callable[[], int | None] | None = None) -> WorkerContext:
        discard = None
        engine = make_engine(settings.resolved_database_url, settings)
        if enqueue is None:  # the real broker: each job to its own pool and priority; clean up after it
            from glai_common.queue import routed_enqueue
            from worker.broker_cleanup import message_sweeper

            enqueue = routed_enqueue(sessionmaker(bind=engine, expire_on_commit=False))
            discard = message_sweeper(settings)
            if queue_depth is None:
                queue_depth = partial(broker_queue_depth, settings)
        return cls(settings=settings, engine=engine,
                   storage=make_storage(settings), enqueue=enqueue,
                   queue_depth=queue_depth or (lambda: None), discard_messages=discard)

    def session(self) -> AbstractContextManager[Session]:
        """One short unit of work: commit on success, roll back on error."""
        return unit_of_work(self.sessions)

    def dispose(self) -> None:
        self.engine.dispose()
