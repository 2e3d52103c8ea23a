"""Finds jobs whose worker died (lease expired) and requeues them, or fails them as ``worker_lost``.

It runs as a daemon thread inside every worker's main process (started on ``worker_ready``), so a
deployment needs no extra beat process: any surviving worker recovers the jobs of a dead one, and a
lone worker that was restarted recovers its own. Running it in several workers at once is safe: the
repository locks each row (PostgreSQL skips rows another reaper holds) and re-checks it under the lock,
and the enqueue happens only after the state change has committed.
"""

from __future__ import annotations

import logging
import threading

from glai_common import jobs
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def reap_once(ctx: WorkerContext) -> list[str]:
    """One pass: commit the state changes, then send a fresh message for each requeued job."""
    with ctx.session() as session:
        requeue = jobs.reap_expired_leases(session, max_attempts=ctx.settings.max_job_attempts)
    for job_id in requeue:
        log.warning("job %s lost its worker: requeued", job_id)
        ctx.enqueue(job_id)
    return requeue


def reaper_interval(lease_s: float) -> float:
    """Often enough to notice a dead worker within about half a lease, never busier than once a second."""
    return min(30.0, max(1.0, lease_s / 2))


class Reaper:
    def __init__(self, ctx: WorkerContext, interval_s: float | None = None) -> None:
        self.ctx = ctx
        self.interval_s = interval_s or reaper_interval(ctx.settings.worker_lease_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Reaper:
        self._thread = threading.Thread(target=self._loop, name="glai-reaper", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _touch_health_file(self) -> None:
        """Proof of life for a container healthcheck: the process runs and reaches the database. (A
        broker ``inspect ping`` would go unanswered while a solo-pool worker is busy training.)"""
        path = self.ctx.settings.worker_health_file
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def _loop(self) -> None:
        while True:
            try:
                reap_once(self.ctx)
                self._touch_health_file()
            except Exception:  # noqa: BLE001 - a database or broker hiccup: try again next round
                log.exception("reaper pass failed")
            if self._stop.wait(self.interval_s):
                return
