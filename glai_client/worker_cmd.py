"""`glai worker`: one training worker on chosen pools, as the Celery command it stands for.

The worker process *is* Celery's (``os.execvpe``), so signals from a supervisor or ``docker stop`` reach
it directly: SIGTERM is a warm shutdown that hands the running job on. One job at a time, solo pool
(training, the reaper and the webhook deliverer share the process).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

from glai_common.queue import consumed_routes
from glai_common.settings import Settings, queue_name_problem


class WorkerOptionError(ValueError):
    """A bad option; the message names it."""


@dataclass(frozen=True)
class WorkerOptions:
    queues: str | None = None  # comma-separated pools; None: the default pool (first of GLAI_QUEUES)
    cpu: bool = False
    name: str | None = None
    log_level: str = "info"


def pools(options: WorkerOptions, settings: Settings) -> list[str]:
    """The pools to serve, each one of ``GLAI_QUEUES`` (a job can only name those)."""
    if options.queues is None:
        return [settings.queues[0]]
    names = [name.strip() for name in options.queues.split(",")]
    if not names or any(not name for name in names):
        raise WorkerOptionError(f"--queues: {options.queues!r} has an empty entry; give comma-separated pool "
                                "names, e.g. gpu-a100,cpu")
    for name in names:
        problem = queue_name_problem(name)
        if problem:
            raise WorkerOptionError(f"--queues: {problem}")
        if name not in settings.queues:
            known = ", ".join(settings.queues)
            raise WorkerOptionError(f"--queues: {name!r} is not one of GLAI_QUEUES ({known}); add it there, "
                                    "for the API too, so that jobs may name it")
    return list(dict.fromkeys(names))


def command(options: WorkerOptions, settings: Settings) -> tuple[list[str], dict[str, str]]:
    """The Celery command line and environment for ``options``."""
    routes = consumed_routes(pools(options, settings))
    name = options.name or f"glai-{os.getpid()}@{socket.gethostname()}"
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
            "--concurrency", "1", "-Q", ",".join(routes), "-n", name, "--loglevel", options.log_level.upper(),
            # Worker-to-worker chatter Celery offers and nothing here uses (the database is the truth).
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    env = dict(os.environ)
    if options.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # torch sees no GPU: the job trains on the CPU
    return argv, env


def run(options: WorkerOptions) -> None:
    """Replace this process with the worker (returns only by raising ``WorkerOptionError``)."""
    argv, env = command(options, Settings())
    os.execvpe(argv[0], argv, env)
