"""`glai serve`: migrate, then run the API (uvicorn) and one Celery worker as child processes, and stop
both together (Ctrl-C, SIGTERM, or the API dying).

A worker that dies (a crash, the OOM killer, or its own exit after a cancel it could not honour) is
started again after a bounded backoff (``WorkerBackoff``), while the API keeps serving: the new worker's
reaper hands the lost job on, resumed from its checkpoints. Children are started with the same
``GLAI_*`` environment, with ``GLAI_DATA_DIR`` made absolute, so the embedded defaults (SQLite database
and sqla+sqlite broker under the data directory) line up.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console

from glai_client.config import local_key_path

STOP_GRACE_S = 20.0


@dataclass
class WorkerBackoff:
    """Seconds to wait before restarting a dead worker: doubling from ``first_s`` up to ``max_s``, and
    back to ``first_s`` once a worker has stayed up for ``healthy_s`` (a one-off crash restarts fast, a
    crash loop does not spin)."""

    first_s: float = 1.0
    max_s: float = 30.0
    healthy_s: float = 60.0
    _next_s: float = 0.0

    def after_exit(self, uptime_s: float) -> float:
        if uptime_s >= self.healthy_s or self._next_s == 0.0:
            self._next_s = self.first_s
        else:
            self._next_s = min(self.max_s, self._next_s * 2)
        return self._next_s


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_local_key(data_dir: Path, database_url: str) -> tuple[str, bool]:
    """The local key from ``<data_dir>/local_api_key``, created (mode 0600) on first start, and again
    if the database no longer knows it (revoked, or the database was reset)."""
    from sqlalchemy.orm import Session

    from api.services.api_keys import create_key, owner_for_key
    from glai_common.db import make_engine

    path = local_key_path(data_dir)
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            if path.is_file():
                key = path.read_text(encoding="utf-8").strip()
                if owner_for_key(session, key) is not None:
                    return key, False
                path.unlink()
            issued = create_key(session, owner="local", name="created by glai serve")
    finally:
        engine.dispose()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(issued.key + "\n")
    return issued.key, True


@dataclass
class ServeOptions:
    host: str
    port: int
    worker: bool
    log_level: str
    api_workers: int = 1  # uvicorn processes serving the API


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            return True
        except OSError:
            return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(url: str, api: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and api.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def run(options: ServeOptions, console: Console) -> int:
    from glai_common.migrate import upgrade
    from glai_common.settings import Settings

    settings = Settings()
    data_dir = settings.data_dir.resolve()
    if not is_loopback(options.host) and not settings.auth_enabled:
        console.print(f"[red]refusing to listen on {options.host} with GLAI_AUTH_ENABLED=false: anyone on "
                      "the network could use the service. Enable auth or bind 127.0.0.1.[/red]")
        return 2
    if not _port_free(options.host, options.port):
        console.print(f"[red]port {options.port} on {options.host} is already in use "
                      "(--port to change)[/red]")
        return 2
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GLAI_DATA_DIR": str(data_dir)}
    os.environ["GLAI_DATA_DIR"] = str(data_dir)
    settings = Settings()
    console.print(f"data directory: {data_dir}")
    upgrade(settings.resolved_database_url)
    key: str | None = None
    if settings.auth_enabled:
        key, created = ensure_local_key(data_dir, settings.resolved_database_url)
        if created:
            console.print(f"created a local API key in {local_key_path(data_dir)} (mode 0600)")

    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker = _Worker(env, options.log_level, console) if options.worker else None
    api: subprocess.Popen[bytes] | None = None
    try:
        if worker is not None:
            worker.start()
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", options.host,
             "--port", str(options.port), "--log-level", options.log_level,
             "--workers", str(options.api_workers)], env=env)
        host = f"[{options.host}]" if ":" in options.host else options.host
        url = f"http://{host}:{options.port}"
        if _wait_healthy(url, api):
            link = f"{url}/dashboard" + (f"#token={key}" if key else "")
            console.print(f"[green]GLAI is running[/green]: API {url}/v1 (docs {url}/docs)")
            console.print(f"dashboard: {link}", soft_wrap=True, highlight=False)
            console.print("press Ctrl-C to stop")
        while not stopping:
            if api.poll() is not None:
                console.print(f"[red]API exited with code {api.returncode}; stopping[/red]")
                return api.returncode or 1
            if worker is not None:
                worker.supervise()
            time.sleep(0.3)
        console.print("stopping...")
        return 0
    finally:
        _stop([proc for proc in (worker.proc if worker else None, api) if proc is not None])
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Worker:
    """The one training worker: started, watched, and restarted with backoff when it dies."""

    def __init__(self, env: dict[str, str], log_level: str, console: Console,
                 backoff: WorkerBackoff | None = None) -> None:
        self.env, self.log_level, self.console = env, log_level, console
        self.backoff = backoff or WorkerBackoff()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None

    def start(self) -> None:
        from glai_common.queue import consumed_routes
        from glai_common.settings import Settings

        routes = ",".join(consumed_routes(Settings().queues))  # one machine: every pool, high first
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
             "-Q", routes, "--loglevel", self.log_level.upper(), "-n", f"glai-{os.getpid()}@%h"],
            env=self.env)
        self.started_at = time.monotonic()
        self.restart_at = None
        self.console.print(f"worker started (pid {self.proc.pid})", highlight=False)

    def supervise(self) -> None:
        """Called from the serve loop: notice a dead worker, and start a new one when its wait is over."""
        if self.restart_at is not None:
            if time.monotonic() >= self.restart_at:
                self.start()
            return
        if self.proc is None or self.proc.poll() is None:
            return
        delay = self.backoff.after_exit(time.monotonic() - self.started_at)
        self.console.print(f"[yellow]worker (pid {self.proc.pid}) exited with code {self.proc.returncode}; "
                           f"restarting it in {delay:g} s (the API keeps running)[/yellow]", highlight=False)
        self.restart_at = time.monotonic() + delay
