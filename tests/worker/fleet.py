"""What the queue and webhook tests run: real ``glai worker`` processes, jobs sent to their own pool and
priority through the real Celery client, and a real HTTP receiver on loopback whose answers a test
scripts (fail, succeed, or hold the request until the test lets it go)."""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from glai_common.db import make_engine
from glai_common.migrate import upgrade
from glai_common.queue import TASK_RUN_JOB, make_celery, routed_enqueue
from glai_common.settings import Settings
from tests.reliability.harness import RedisServer
from tests.worker.harness import Backend, LoggedProcess


class GlaiWorker(LoggedProcess):
    """``glai worker --queues ...`` (the CLI, which execs Celery) with its output in a file."""

    stop_grace_s = 5.0

    def __init__(self, backend: Backend, log_path: Path, queues: str | None = None, cpu: bool = False,
                 env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "glai_client.cli", "worker", "--name",
                   f"test-{uuid.uuid4().hex[:8]}"]
        if queues is not None:
            command += ["--queues", queues]
        if cpu:
            command.append("--cpu")
        super().__init__(command, {**backend.env(), **(env or {})}, log_path)


def fleet_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The deployment a ``params=["sqlite", "redis-postgres"]`` fixture asks for: the embedded defaults, or
    PostgreSQL with a private Redis (the shared one may carry other test runs' workers and messages)."""
    if request.param == "sqlite":
        return Backend(f"sqlite:///{tmp_path / 'glai.db'}", f"sqla+sqlite:///{tmp_path / 'broker.db'}",
                       tmp_path)
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    request.addfinalizer(redis.stop)
    return Backend(request.getfixturevalue("postgres_url"), redis.url, tmp_path)


class Fleet:
    """A test's deployment: its database and broker, sends routed like the API's, workers it started."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        upgrade(backend.database_url)
        self.engine = make_engine(backend.database_url)
        self.sessions: sessionmaker[Session] = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.storage_dir = backend.data_dir / "storage"
        self.settings = Settings(broker_url=backend.broker_url, data_dir=backend.data_dir,
                                 database_url=backend.database_url)
        self.celery = make_celery("fleet-test", self.settings)
        self.enqueue = routed_enqueue(self.sessions, send=lambda job_id, queue: self.celery.send_task(
            TASK_RUN_JOB, args=[job_id], queue=queue))
        self.workers: list[GlaiWorker] = []

    def start_worker(self, queues: str | None = None, cpu: bool = False, **env: str) -> GlaiWorker:
        worker = GlaiWorker(self.backend, self.backend.data_dir / f"worker-{len(self.workers)}.log", queues,
                            cpu, {f"GLAI_{k.upper()}": v for k, v in env.items()})
        self.workers.append(worker)
        return worker

    def output(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.output()}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.celery.close()
        self.engine.dispose()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A loopback HTTP server. ``answers`` is the status for each request in turn (the last repeats);
    ``hold_first`` keeps the first request waiting until ``release`` is set."""

    answers: list[int] = field(default_factory=lambda: [200])
    hold_first: bool = False
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                import time

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.requests.append(Received(dict(self.headers.items()), body, time.monotonic()))
                    index = len(receiver.requests) - 1
                receiver.arrived.set()
                if index == 0 and receiver.hold_first:
                    receiver.release.wait(60)
                status = receiver.answers[min(index, len(receiver.answers) - 1)]
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed): nobody to answer

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def set_job(sessions: sessionmaker[Session], job_id: str, **values: Any) -> None:
    """Routing fields on a stored job, as the API stores them."""
    from glai_common.models import Job

    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for key, value in values.items():
            setattr(job, key, value)


def until(condition: Callable[[], Any], timeout: float, what: str, fleet: Fleet | None = None) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (f"\n{fleet.output()}" if fleet is not None else ""))
