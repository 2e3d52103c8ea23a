"""Fault injection for the reliability suite: a private Redis that can be restarted, a TCP proxy in
front of PostgreSQL that can be cut, a stack of real worker subprocesses, and the audit every test runs
on every job (no job lost, none run twice at once, final state recorded once, curves in step order)."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from glai_common import jobs
from glai_common.db import make_engine
from glai_common.migrate import upgrade
from glai_common.models import CurvePoint, JobTransition
from glai_common.queue import QUEUE, TASK_RUN_JOB, make_celery
from glai_common.settings import Settings
from tests.conftest import require_service
from tests.worker.harness import Backend, WorkerProcess, job_state, wait_for

FINAL = {"succeeded", "failed", "cancelled"}
ACTIVE = {"running", "cancelling"}

# Short everything so the whole suite stays within minutes on two shared cores.
FAST_ENV = {
    "GLAI_WORKER_LEASE_S": "3",
    "GLAI_HEARTBEAT_INTERVAL_S": "0.5",
    "GLAI_CHECKPOINT_INTERVAL_S": "0",  # every epoch: the kill tests resume mid-phase
    "GLAI_REAPER_INTERVAL_S": "1",
    "GLAI_REQUEUE_STALE_QUEUED_S": "2",
    "GLAI_CANCEL_GRACE_S": "5",
    "GLAI_CANCEL_FORCE_S": "20",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- a Redis of our own ----------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free loopback port without persistence, like a cache-style deployment: a
    restart loses every queued message. Never the shared server on 6379."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            require_service("redis-server binary", "127.0.0.1", 1)  # skips locally, fails under CI
        self.binary = str(binary)
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: _reachable(self.port), 10, f"redis-server on port {self.port}")

    def crash(self) -> None:
        """SIGKILL: every message, queued or unacked, is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, down_s: float = 1.0) -> None:
        self.crash()
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        self.crash()


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- a TCP proxy we can cut ------------------------------------------------------------------------


class TcpProxy:
    """Loopback proxy to ``target``. ``cut()`` closes every open connection and stops listening (new
    connections are refused, as when the database restarts); ``restore()`` listens again on the same
    port. Runs its own asyncio loop in a daemon thread."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self.restore()

    def _call(self, coro: object, timeout: float = 10) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers.update({client_w, server_w})
        try:
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        finally:
            self._writers.difference_update({client_w, server_w})

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()  # RST, no graceful close: the client sees a dead connection
        self._writers.clear()

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# --- a stack: database, broker, workers ------------------------------------------------------------


class Stack:
    """What a test drives: its own sessions on the database, a Celery client on the broker, workers.

    ``worker_database_url`` lets the workers reach the database through a proxy while the test itself
    keeps a direct connection."""

    def __init__(self, database_url: str, broker_url: str, data_dir: Path,
                 worker_database_url: str | None = None, **env: str) -> None:
        upgrade(database_url)
        self.database_url = database_url
        self.engine = make_engine(database_url)
        self.sessions: sessionmaker[Session] = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.data_dir = data_dir
        self.storage_dir = data_dir / "storage"
        self.backend = Backend(worker_database_url or database_url, broker_url, data_dir,
                               extra_env={**FAST_ENV, **{f"GLAI_{k.upper()}": v for k, v in env.items()}})
        self.celery = make_celery("reliability-test", Settings(broker_url=broker_url, data_dir=data_dir))
        self.workers: list[WorkerProcess] = []

    def enqueue(self, job_id: str) -> None:
        self.celery.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE)

    def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.backend, self.data_dir / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def state(self, job_id: str) -> str:
        return job_state(self.sessions, job_id).state

    def wait_state(self, job_id: str, states: Iterable[str], timeout: float,
                   worker: WorkerProcess | None = None) -> str:
        wanted = set(states)
        return wait_for(lambda: (s := self.state(job_id)) in wanted and s, timeout,
                        f"job {job_id} to reach {sorted(wanted)}", worker, interval=0.1)

    def steps(self, job_id: str, phase: str = "structural", series: str = "val_accuracy") -> list[int]:
        with self.sessions() as session:
            return list(session.scalars(select(CurvePoint.step).where(
                CurvePoint.job_id == job_id, CurvePoint.phase == phase, CurvePoint.series == series)
                .order_by(CurvePoint.id)))

    def log(self, job_id: str) -> list[str]:
        with self.sessions() as session:
            return [line.text for line in jobs.read_log(session, job_id, limit=100_000)]

    def worker_output(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.output()}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.celery.close()
        self.engine.dispose()


# --- the audit ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    owner: str
    number: int
    start: datetime
    end: datetime | None


CLAIMED = re.compile(r"claimed by (\S+) \(attempt (\d+)\)")


def audit(stack: Stack, job_id: str) -> list[Attempt]:
    """Every invariant a job must keep whatever was injected; returns its attempts.

    * the state trail is a valid path ending in exactly one final state (recorded once);
    * attempts are numbered 1..n in claim order, n == jobs.attempts, each claimed by a new owner, and
      their running intervals do not overlap (no two workers ran it at once);
    * the log has one "attempt k on" line per claim;
    * each curve (series, phase) has unique steps in increasing order of insertion.
    """
    job = job_state(stack.sessions, job_id)
    with stack.sessions() as session:
        trail = list(session.execute(select(JobTransition.from_value, JobTransition.to_value,
                                            JobTransition.reason, JobTransition.at)
                                     .where(JobTransition.job_id == job_id, JobTransition.field == "state")
                                     .order_by(JobTransition.id)))
        points = list(session.execute(select(CurvePoint.phase, CurvePoint.series, CurvePoint.step)
                                      .where(CurvePoint.job_id == job_id).order_by(CurvePoint.id)))
    assert job.state in FINAL, (job_id, job.state)
    finals = [row for row in trail if row.to_value in FINAL]
    assert len(finals) == 1 and trail[-1].to_value == job.state, trail
    previous = "queued"
    attempts: list[Attempt] = []
    for row in trail:
        assert row.from_value == previous, f"broken trail {trail}"
        previous = row.to_value
        if row.to_value == "running":
            match = CLAIMED.search(row.reason)
            assert match, row.reason
            attempts.append(Attempt(match.group(1), int(match.group(2)), row.at, None))
        elif row.from_value in ACTIVE and row.to_value not in ACTIVE:
            attempts[-1] = Attempt(attempts[-1].owner, attempts[-1].number, attempts[-1].start, row.at)
    assert [a.number for a in attempts] == list(range(1, len(attempts) + 1)) and len(attempts) == job.attempts
    assert len({a.owner for a in attempts}) == len(attempts)
    for earlier, later in zip(attempts, attempts[1:], strict=False):
        assert earlier.end is not None and earlier.end <= later.start, attempts
    log = stack.log(job_id)
    for attempt in attempts:  # a worker killed within a flush interval of its claim may leave none
        assert sum(line.startswith(f"attempt {attempt.number} on ") for line in log) <= 1, log[:40]
    if attempts and job.failure_kind != "worker_lost":  # the attempt that finished wrote its line
        assert sum(line.startswith(f"attempt {attempts[-1].number} on ") for line in log) == 1, log[:40]
    curves: dict[tuple[str, str], list[int]] = {}
    for phase, series, step in points:
        curves.setdefault((phase, series), []).append(step)
    for key, steps in curves.items():
        assert steps == sorted(set(steps)), (key, steps)
    return attempts

