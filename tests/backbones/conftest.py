"""Backbone tests run offline: hub lookups are switched off and every socket to a non-loopback address is
refused, in this process and in the service processes a test starts. ``service`` is the real thing:
uvicorn and a Celery worker (solo pool) as child processes on SQLite with the embedded SQLite broker."""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from glai_client.client import GlaiClient
from tests.e2e.stack import Process, free_port, service_env, start_api, start_worker, wait_ready

OFFLINE_SITE = Path(__file__).parent / "offline_site"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _guard_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("glai_offline_site", OFFLINE_SITE / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def no_network() -> Iterator[ModuleType]:
    """Offline for the whole session of these tests (restored afterwards for other packages)."""
    guard = _guard_module()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFLINE_ENV.items():
            patch.setenv(name, value)
        patch.setattr(socket.socket, "connect", guard.guarded(socket.socket.connect))
        patch.setattr(socket.socket, "connect_ex", guard.guarded(socket.socket.connect_ex))
        yield guard


def offline_env(env: dict[str, str]) -> dict[str, str]:
    """A child process environment with the network guard and the hub switched off."""
    path = os.pathsep.join(p for p in (str(OFFLINE_SITE), env.get("PYTHONPATH", "")) if p)
    return {**env, **OFFLINE_ENV, "GLAI_TEST_NO_NETWORK": "1", "PYTHONPATH": path}


@dataclass
class Service:
    url: str
    key: str
    data_dir: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'glai.db'}"

    @property
    def storage(self) -> Path:
        return self.data_dir / "storage"

    def client(self, key: str | None = None) -> GlaiClient:
        return GlaiClient(self.url, key or self.key, timeout=120)

    def new_key(self, owner: str) -> str:
        from sqlalchemy.orm import Session

        from api.services import api_keys
        from glai_common.db import make_engine

        engine = make_engine(self.database_url)
        try:
            with Session(engine) as session:
                return api_keys.create_key(session, owner).key
        finally:
            engine.dispose()

    def tails(self) -> str:
        return "\n".join(p.tail(6000) for p in self.processes)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from glai_common.migrate import upgrade

    root = tmp_path_factory.mktemp("backbone-service")
    data_dir = root / "var"
    data_dir.mkdir()
    env = offline_env(service_env(data_dir, heartbeat_interval_s="0.5"))
    upgrade(f"sqlite:///{data_dir / 'glai.db'}")
    port = free_port()
    svc = Service(f"http://127.0.0.1:{port}", "", data_dir, env)
    svc.key = svc.new_key("backbones")
    svc.processes = [start_worker(env, root), start_api(env, port, root)]
    try:
        wait_ready(svc.url, svc.processes, timeout=120)
        yield svc
    except BaseException:
        print(svc.tails())
        raise
    finally:
        for process in svc.processes:
            process.stop()
