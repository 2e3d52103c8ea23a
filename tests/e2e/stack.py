"""Run the real service as child processes: uvicorn + a Celery worker (what `glai serve` runs), or
`glai serve` itself. Output goes to files that failing tests print."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} ---\n" + self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLAI_")}
    env.update({"GLAI_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    env.update({f"GLAI_{k.upper()}": v for k, v in settings.items()})
    return env


def start_api(env: dict[str, str], port: int, log_dir: Path) -> Process:
    return Process("api", [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                           "--port", str(port), "--log-level", "warning"], env, log_dir)


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker") -> Process:
    return Process(name, [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool",
                          "solo", "-Q", "glai", "--loglevel", "INFO", "-n", f"e2e-{name}-{os.getpid()}@%h",
                          "--without-gossip", "--without-mingle", "--without-heartbeat"], env, log_dir)


def wait_ready(url: str, processes: list[Process], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.proc.poll() is not None:
                raise RuntimeError(f"{process.name} exited early\n{process.tail()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("service not ready in time\n" + "\n".join(p.tail() for p in processes))
