"""The worker's Celery app (``glai worker --queues glai``, which runs ``celery -A worker.celery_app worker
-Q glai.high,glai,glai.low --pool solo --concurrency 1``: a pool's queues, high priority first).

Run one worker per GPU, each seeing one device and running one job at a time::

    CUDA_VISIBLE_DEVICES=0 glai worker --queues glai --name gpu0@%h
    CUDA_VISIBLE_DEVICES=1 glai worker --queues glai --name gpu1@%h
    glai worker --queues cpu --cpu --name cpu0@%h      # a CPU-only worker for jobs with "queue": "cpu"

``--pool solo`` (recommended) runs the task in the worker's own process: no fork at all, and a warm
shutdown (SIGTERM) stops the job at its next step and hands it on. ``--pool prefork --concurrency 1``
also works: nothing here touches CUDA or opens a database connection before the fork (torch.cuda is
first touched inside the task; engines are disposed in the child). Late acks, prefetch 1, reject on
worker lost and a broker visibility timeout above the longest job come from
``glai_common.queue.celery_config``. The lease reaper (worker/reaper.py) and the webhook deliverer
(worker/webhooks.py) run as daemon threads in the main process of every worker, so no separate beat
process is needed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import signals

from glai_common.queue import QUEUE, make_celery
from glai_common.settings import get_settings
from worker import priority_transport

priority_transport.install()  # the embedded SQL broker reads the queues high first, like Redis
app = make_celery("glai-worker")
app.conf.update(
    include=["worker.tasks"],
    task_default_queue=QUEUE,
    # A broker restart must never end the worker: reconnect for as long as it takes. Running jobs keep
    # running meanwhile (their truth, lease and heartbeat live in the database, not in the broker), and
    # queued jobs whose messages the restart lost are re-sent by the reaper (resend_stale_queued).
    broker_connection_retry=True,
    broker_connection_max_retries=None,
    worker_cancel_long_running_tasks_on_connection_loss=False,
)

log = logging.getLogger(__name__)
_reaper: Any = None
_deliverer: Any = None


def _identity(consumer: Any) -> tuple[str, list[str]]:
    """The node name and the pools this worker consumes (``-Q glai.high,glai,glai.low`` -> ``glai``)."""
    names = [queue.name for queue in getattr(getattr(consumer, "task_consumer", None), "queues", None) or []]
    pools = [name.rsplit(".", 1)[0] if name.endswith((".high", ".low")) else name for name in names]
    return str(getattr(consumer, "hostname", None) or "unknown"), list(dict.fromkeys(pools))


AUTOGROUP = Path("/proc/self/autogroup")


def lower_cpu_priority(nice: int) -> int:
    """Raise this process's niceness to at least ``nice`` and return it. Called in the main thread before
    any other starts, so the reaper, the deliverer, torch's pool and forked children all inherit it.

    Linux's autogroup scheduling weighs sessions against each other and a niceness only within its own
    session, so a worker that leads its own session (started with setsid, as a daemon) raises its
    autogroup's niceness too; that group holds only the worker and its children. Under a cgroup CPU
    controller (containers, systemd) autogroup is off and the cgroup's weight decides instead."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if os.getsid(0) == os.getpid():
        _raise_autogroup_nice(nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def _raise_autogroup_nice(nice: int) -> None:
    try:
        current = int(AUTOGROUP.read_text().split("nice")[-1])
        if nice > current:
            AUTOGROUP.write_text(str(nice))
    except (OSError, ValueError):  # not Linux, no autogroup, or not allowed: the plain niceness stands
        pass


@signals.worker_init.connect
def _yield_cpu(**_: Any) -> None:
    log.info("worker niceness %d", lower_cpu_priority(get_settings().worker_nice))


@signals.worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    global _reaper, _deliverer
    from worker.context import WorkerContext
    from worker.reaper import Reaper
    from worker.webhooks import Deliverer

    identity = _identity(sender)
    _reaper = Reaper(WorkerContext.from_settings(get_settings()), identity=identity).start()
    log.info("lease reaper started (every %.1f s) for %s on %s", _reaper.interval_s, identity[0],
             ",".join(identity[1]))
    _deliverer = Deliverer(_reaper.ctx).start()
    log.info("webhook deliverer started (every %.1f s)", _deliverer.interval_s)


@signals.worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    from worker.tasks import shutdown_requested

    shutdown_requested.set()
    if _reaper is not None:
        _reaper.stop(timeout=1.0)
    if _deliverer is not None:
        _deliverer.stop(timeout=1.0)


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """A forked pool child must not use, nor close, the parent's database connections."""
    from glai_common.db import get_engine

    if _reaper is not None:
        _reaper.ctx.engine.dispose(close=False)
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
