"""Fixtures shared by every test package: real PostgreSQL and Redis when present.

Locally a missing service skips the tests that need it, with the reason; under CI=true it fails them,
so a CI run can never pass by silently skipping the real-service tests.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_ADMIN_URL = os.environ.get("GLAI_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("GLAI_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: real-service tests must run)")
    pytest.skip(message)


@contextmanager
def fresh_postgres_database(prefix: str = "glai_test") -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, drop it afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    """A Redis URL on a database number chosen per test run, flushed before use."""
    require_service("Redis", "127.0.0.1", 6379)
    import redis

    db = int(os.environ.get("GLAI_TEST_REDIS_DB", "5"))
    url = f"{REDIS_URL}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def _s3_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.s3_server import s3_endpoint_for_session

    with s3_endpoint_for_session(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def s3(_s3_session: object) -> object:
    """A real S3 endpoint (moto's server; see tests/s3_server.py): skipped locally without one, failed
    under CI=true."""
    from tests.s3_server import require

    return require(_s3_session)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small problems: a single intra-op thread avoids oversubscription on the shared 2-core runners."""
    import torch  # here, not at the top: the service tests need no torch import of their own

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
