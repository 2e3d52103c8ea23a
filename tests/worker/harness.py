"""A real Celery worker in a subprocess, plus the helpers the end-to-end tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from glai_common.models import Dataset, Job
from glai_core.data import builtin, save_canonical

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@dataclass
class Backend:
    """Where a test's worker and the test itself meet: database, broker and data directory."""

    database_url: str
    broker_url: str
    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLAI_")}
        env.update({
            "GLAI_DATABASE_URL": self.database_url,
            "GLAI_BROKER_URL": self.broker_url,
            "GLAI_DATA_DIR": str(self.data_dir),
            # Short leases so a killed worker is noticed within seconds.
            "GLAI_WORKER_LEASE_S": "3",
            "GLAI_HEARTBEAT_INTERVAL_S": "0.5",
            "GLAI_CHECKPOINT_INTERVAL_S": "0",  # every epoch: the kill tests resume mid-phase
            "GLAI_MAX_JOB_ATTEMPTS": "3",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",  # two cores shared with other tests
        })
        env.update(self.extra_env)
        return env


class LoggedProcess:
    """A subprocess in a session of its own, its output in a file. ``stop`` is SIGTERM (a warm shutdown)
    and SIGKILL after ``stop_grace_s``; ``kill`` is SIGKILL at once: no cleanup at all, as when a machine
    dies."""

    stop_grace_s = 1.0

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


class WorkerProcess(LoggedProcess):
    """``celery -A worker.celery_app worker --pool solo --concurrency 1 -Q glai`` with output in a file."""

    def __init__(self, backend: Backend, log_path: Path, pool: str = "solo") -> None:
        command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", pool,
                   "--concurrency", "1", "-Q", "glai", "--loglevel", "INFO", "-n",
                   f"test-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle",
                   "--without-heartbeat"]
        super().__init__(command, backend.env(), log_path)


def wait_for(condition: Callable[[], T | None], timeout: float, what: str,
             worker: WorkerProcess | None = None, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}) waiting for {what}:\n"
                                 f"{worker.output()}")
        time.sleep(interval)
    detail = f"\n--- worker output ---\n{worker.output()}" if worker is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """Seconds, not minutes, on two shared CPU cores."""
    config: dict[str, Any] = {
        "architecture": {"hidden": [16]},
        "structural": {"max_epochs": 2, "min_epochs": 1, "batch_size": 256, "probe_size": 200},
        "quantitative": {"epochs": 1, "batch_size": 256, "ridge_lambda_search": 0},
        "pruning": {"enabled": True, "sparsities": [0.5], "finetune_epochs": 1},
        "baseline": {"max_epochs": 2, "batch_size": 256},
        "seed": 0,
        "device": "auto",
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


def insert_digits_job(sessions: sessionmaker[Session], storage_dir: Path, config: dict[str, Any],
                      time_limit_s: int = 600, n_samples: int = 600) -> str:
    """The sklearn digits (first ``n_samples``) as a stored dataset, and one queued job on it."""
    data = builtin("digits")
    data.x, data.y = data.x[:n_samples], data.y[:n_samples]
    dataset_id = uuid.uuid4().hex
    key = f"datasets/{dataset_id}"
    save_canonical(storage_dir / key, data)
    with sessions.begin() as session:
        session.add(Dataset(id=dataset_id, owner="alice", name="digits", kind="features", source="builtin",
                            file_format="builtin", sha256="0" * 64, size_bytes=1, n_samples=n_samples,
                            n_features=data.n_features, n_classes=data.n_classes,
                            class_names=list(data.class_names), storage_key=key))
        session.flush()
        job = Job(owner="alice", dataset_id=dataset_id, spec={"config": config, "backbone": None,
                                                              "validation_fraction": 0.2},
                  time_limit_s=time_limit_s)
        session.add(job)
        session.flush()
        return job.id


def job_state(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        session.expunge(job)
        return job
