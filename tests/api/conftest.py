"""API test fixtures: the app over a real database (SQLite and PostgreSQL, schema from the migrations),
one fresh owner per test, and an enqueue that records job ids instead of talking to a broker.

Each backend's database is migrated once per session; tests stay independent because every row they
touch belongs to an owner created for that test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.deps import Services
from api.main import create_app
from api.services import api_keys
from glai_common.migrate import upgrade
from glai_common.settings import Settings
from tests.api.helpers import Api
from tests.conftest import fresh_postgres_database
from tests.uvicorn_thread import serve_in_thread


@pytest.fixture(scope="session")
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('api-db') / 'glai.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One migrated PostgreSQL database for the API suite (like ``postgres_url``, but session-wide)."""
    with fresh_postgres_database("glai_api") as url:
        upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_database"))


@pytest.fixture
def make_api(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Build an app with settings overrides, e.g. ``make_api(max_upload_bytes=1000)``."""
    made: list[Api] = []

    def factory(enqueue: Callable[[str], None] | None = None, **overrides: Any) -> Api:
        values = {"data_dir": tmp_path / f"data{len(made)}", "database_url": database_url,
                  "broker_url": "memory://", **overrides}
        settings = Settings(**values)
        recorded: list[str] = []
        app = create_app(settings, enqueue=enqueue or recorded.append)
        services: Services = app.state.services
        owner = f"owner-{uuid.uuid4().hex[:10]}"
        with services.sessions() as session:
            key = api_keys.create_key(session, owner).key
        client = TestClient(app, headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)
        api = Api(client=client, services=services, owner=owner, key=key, enqueued=recorded)
        made.append(api)
        return api

    yield factory
    for api in made:
        api.client.close()
        api.services.engine.dispose()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


@pytest.fixture
def server(make_api: Callable[..., Api]) -> Iterator[tuple[Api, str]]:
    """The app on a real socket (uvicorn in a thread): (api, base URL)."""
    api = make_api(max_upload_bytes=200_000)
    with serve_in_thread(api.client.app, lifespan="off") as url:
        yield api, url
