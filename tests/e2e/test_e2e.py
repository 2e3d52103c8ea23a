"""End to end with a real Celery worker process: (a) PostgreSQL + Redis with uvicorn and the worker
started the way `glai serve` starts them, (b) the embedded defaults through `glai serve` itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.services import api_keys
from glai_client.client import GlaiClient
from glai_common.db import make_engine
from glai_common.migrate import upgrade
from tests.e2e import flow
from tests.e2e.stack import Process, free_port, service_env, start_api, start_worker, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.postgres
@pytest.mark.redis
def test_postgres_redis_stack(postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        key = api_keys.create_key(session, "e2e").key
    engine.dispose()
    env = service_env(tmp_path / "data", database_url=postgres_url, broker_url=redis_url)
    port = free_port()
    processes = [start_worker(env, tmp_path), start_api(env, port, tmp_path)]
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, processes)
        with GlaiClient(url, key) as client:
            flow.train_and_predict(client, tmp_path)
            flow.cancel_running(client, tmp_path)
    except BaseException:
        print("\n".join(p.tail() for p in processes))
        raise
    finally:
        for process in processes:
            process.stop()


def _worker_pid(parent: int) -> int | None:
    """The celery child of ``parent`` (from /proc), if one is running."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == parent and b"celery" in cmdline and fields[0] != "Z":
            return int(stat.parent.name)
    return None


def _kill_the_worker(serve: Process, url: str) -> None:
    """SIGKILL `glai serve`'s worker: serve restarts it and the API answers all along."""
    first = _worker_pid(serve.proc.pid)
    assert first is not None, serve.tail()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (second := _worker_pid(serve.proc.pid)) in (None, first):
        assert serve.proc.poll() is None, f"glai serve exited when its worker died\n{serve.tail()}"
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() < deadline, serve.tail()
        time.sleep(0.2)
    log = serve.log_path.read_text()
    assert f"worker (pid {first}) exited with code -9; restarting it in 1 s" in log, serve.tail()
    assert f"worker started (pid {second})" in log


def test_glai_serve_embedded(tmp_path: Path) -> None:
    """`glai serve` with the defaults (SQLite + sqla+sqlite broker): its worker is killed and restarted
    while the API stays up, the restarted worker trains, then Ctrl-C stops API and worker."""
    data_dir = tmp_path / "var"
    port = free_port()
    serve = Process("serve", [sys.executable, "-m", "glai_client.cli", "serve", "--port", str(port),
                              "--log-level", "warning"], service_env(data_dir), tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, [serve], timeout=90)
        _kill_the_worker(serve, url)
        key_file = data_dir / "local_api_key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert (data_dir / "glai.db").exists()
        with GlaiClient(url, key_file.read_text().strip()) as client:
            flow.train_and_predict(client, tmp_path)
            # the job went through the embedded broker in the data directory (the worker may connect,
            # and create the file, only after the API reports ready: not checked before a job ran)
            assert (data_dir / "broker.db").exists()
            flow.cancel_running(client, tmp_path)
        serve.proc.send_signal(signal.SIGINT)
        assert serve.proc.wait(timeout=40) == 0
    except BaseException:
        print(serve.tail(8000))
        raise
    finally:
        serve.stop()
    log = serve.log_path.read_text()
    assert "dashboard: " in log and "#token=glai_" in log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_glai_serve_refuses_open_host_without_auth(tmp_path: Path) -> None:
    env = service_env(tmp_path / "var", auth_enabled="false")
    result = subprocess.run([sys.executable, "-m", "glai_client.cli", "serve", "--host", "0.0.0.0",
                             "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "refusing" in result.stdout
    assert not (tmp_path / "var").exists()
