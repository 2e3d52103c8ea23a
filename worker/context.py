"""What a worker process needs, built from explicit settings (never from import-time globals).

Tests build one from URLs; the Celery task builds one lazily per process, after the prefork pool has
forked, so no database connection or CUDA state crosses a fork.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from glai_common.db import make_engine
from glai_common.settings import Settings
from glai_common.storage import LocalStorage


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    storage: LocalStorage
    enqueue: Callable[[str], None]
    sessions: sessionmaker[Session] = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings, enqueue: Callable[[str], None] | None = None) -> WorkerContext:
        if enqueue is None:
            from glai_common.queue import enqueue_job

            enqueue = enqueue_job
        return cls(settings=settings, engine=make_engine(settings.resolved_database_url),
                   storage=LocalStorage(settings.resolved_storage_dir), enqueue=enqueue)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One short unit of work: commit on success, roll back on error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
