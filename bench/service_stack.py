"""The real service on loopback for the benchmarks (not a test): load, scale and overhead.

A fresh PostgreSQL database (dropped at the end), a private ``redis-server``, the API under uvicorn and
one Celery worker (``--pool solo``: the job runs in the worker's main process, so its /proc status is the
job's memory). Extra environment (``GLAI_*`` settings, thread counts) can be passed, and the pids are
exposed so a benchmark can read each process's peak RSS (VmHWM).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("GLAI_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


@dataclass
class Stack:
    url: str
    key: str
    database_url: str
    broker_url: str
    data_dir: Path
    api: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)  # every training worker
    cleanup: list[Any] = field(default_factory=list)

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"},
                            timeout=timeout)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        for action in reversed(self.cleanup):
            action()


def start_stack(extra_env: dict[str, str] | None = None, keep_logs: str = "glai-stack",
                api_app: str = "api.main:create_app", api_workers: int = 1,
                training_workers: int = 1) -> Stack:
    """``training_workers``: Celery worker processes, one job each at a time (``Stack.workers``;
    ``Stack.worker`` is the first)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from api.services.api_keys import create_key
    from glai_common.db import make_engine
    from glai_common.migrate import upgrade
    from glai_common.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="glai-stack-"))
    name = f"glai_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    procs: list[subprocess.Popen[bytes]] = []

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        for log in ("api.log", "worker.log"):  # kept for a look after the run
            if (tmp / log).exists():
                shutil.copy(tmp / log, Path(tempfile.gettempdir()) / f"{keep_logs}-{log}")
        shutil.rmtree(tmp, ignore_errors=True)

    def stop_all() -> None:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        drop()

    try:
        upgrade(database_url)
        redis_port = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_port(redis_port, 10)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLAI_")}
        env.update({"GLAI_DATABASE_URL": database_url, "GLAI_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
                    "GLAI_DATA_DIR": str(tmp), "PYTHONUNBUFFERED": "1"})
        env.update(extra_env or {})
        settings = Settings(database_url=database_url, broker_url=env["GLAI_BROKER_URL"], data_dir=tmp)
        engine = make_engine(database_url, settings)
        with Session(engine) as session:
            issued = create_key(session, "bench")
        engine.dispose()
        api_port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", api_app, "--factory", "--host", "127.0.0.1",
             "--port", str(api_port), "--workers", str(api_workers), "--log-level", "warning",
             "--no-access-log"],
            cwd=REPO, env=env, stdout=open(tmp / "api.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True)
        procs.append(api)
        workers = [subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
             "-Q", "glai", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", f"bench{i}@%h"],
            cwd=REPO, env=env, stdout=open(tmp / ("worker.log" if i == 0 else f"worker{i}.log"), "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True) for i in range(training_workers)]
        procs.extend(workers)
        worker = workers[0]
        wait_port(api_port, 60)
    except BaseException:
        stop_all()
        raise
    return Stack(f"http://127.0.0.1:{api_port}", issued.key, database_url, env["GLAI_BROKER_URL"], tmp, api,
                 worker, procs, cleanup=[drop], workers=workers)


def wait_worker_ready(stack: Stack, timeout: float = 60.0) -> None:
    """Celery prints 'ready' once it consumes; with --loglevel WARNING it does not, so wait for the
    worker's imports to settle instead: its RSS stops growing."""
    from glai_core.streaming import current_rss_bytes

    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        time.sleep(1.0)
        rss = current_rss_bytes(stack.worker.pid)
        if rss == last:
            return
        last = rss


def wait_job(client: httpx.Client, job_id: str, timeout: float, poll: float = 0.5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(poll)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s")


def transitions(database_url: str, job_id: str) -> tuple[datetime, list[tuple[str, str, datetime]]]:
    """(created_at, [(field, to_value, at)]) straight from the database."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from glai_common.db import make_engine
    from glai_common.models import Job, JobTransition

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            created = session.scalar(select(Job.created_at).where(Job.id == job_id))
            rows = session.execute(select(JobTransition.field, JobTransition.to_value, JobTransition.at)
                                   .where(JobTransition.job_id == job_id).order_by(JobTransition.id)).all()
        assert created is not None
        return created, [(f, v, at) for f, v, at in rows]
    finally:
        engine.dispose()


def gpu_memory_of(pid: int) -> int | None:
    """Device memory a process holds per nvidia-smi (bytes), None without a GPU or the tool."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            return int(parts[1]) * 1024**2
    return 0
