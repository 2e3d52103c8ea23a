"""Fixtures of the reliability suite: a fresh PostgreSQL database per test (``postgres_url``), a private
Redis per test that the test may crash and restart, and a cuttable proxy in front of PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.reliability.harness import RedisServer, Stack, TcpProxy


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()  # always: a crashed-and-restarted server must not outlive its test


@pytest.fixture
def pg_proxy(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy to the test's database and the URL that goes through it."""
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.close()


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(database_url: str, broker_url: str, **kwargs: str) -> Stack:
        stacks.append(Stack(database_url, broker_url, tmp_path, **kwargs))
        return stacks[-1]

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()
