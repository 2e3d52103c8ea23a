"""Engine and session factory. SQLite gets WAL and a busy timeout so API and worker can share it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from glai_common.settings import Settings, get_settings


def make_engine(url: str, settings: Settings | None = None) -> Engine:
    """One engine per process. The pool is sized from settings so the API's thread pool can be matched
    to it (see ``api.main``): a request thread never waits on a connection held by a request that is
    itself waiting for a thread."""
    settings = settings or get_settings()
    pool = {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout_s}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


# Short reads: a few connections serve many, and none is opened (and closed again) per burst.
READ_POOL = {"pool_size": 8, "max_overflow": 0}


def make_read_engine(url: str, settings: Settings | None = None) -> Engine:
    """An engine for the API's hottest reads (status polls): autocommit and no ping on checkout, so one
    select is one round trip instead of ping, BEGIN, select and ROLLBACK. A connection that died is
    invalidated by the failed statement; callers retry once (``api.services.job_status``). SQLite has no
    round trips to save: it gets the ordinary engine."""
    settings = settings or get_settings()
    if url.startswith("sqlite"):
        return make_engine(url, settings)
    return create_engine(url, isolation_level="AUTOCOMMIT", pool_recycle=300,
                         pool_timeout=settings.db_pool_timeout_s, **READ_POOL)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().resolved_database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def unit_of_work(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One short unit of work: commit on success, roll back on error, always close."""
    session = sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
