"""Finds jobs whose worker died (lease expired) and requeues them, or fails them as ``worker_lost``;
re-sends queued jobs whose message was lost; removes the broker messages of jobs that are final.

It runs as a daemon thread inside every worker's main process (started on ``worker_ready``), so a
deployment needs no extra beat process: any surviving worker recovers the jobs of a dead one, and a
lone worker that was restarted recovers its own. Running it in several workers at once is safe: the
repository locks each row (PostgreSQL skips rows another reaper holds) and re-checks it under the lock,
and the enqueue happens only after the state change has committed.
"""

from __future__ import annotations

import logging
import threading

from glai_common import jobs, metrics_store
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def reap_once(ctx: WorkerContext) -> list[str]:
    """One pass: commit the state changes, then send a fresh message for each requeued job.

    A send that fails (broker down) leaves the job queued without a message; ``resend_stale_queued``
    sends it again later, so the order "commit, then send" never loses a job."""
    with ctx.session() as session:
        requeue = jobs.reap_expired_leases(session, max_attempts=ctx.settings.max_job_attempts)
    for job_id in requeue:
        log.warning("job %s lost its worker: requeued", job_id)
        ctx.enqueue(job_id)
    return requeue


def resend_stale_queued(ctx: WorkerContext) -> list[str]:
    """Send queued jobs that no worker claimed within ``requeue_stale_queued_s`` to the queue again.

    Only when the broker holds fewer waiting messages than there are queued jobs (or cannot say): a
    long queue behind busy workers is not mistaken for lost messages and does not fill up with
    duplicates. A duplicate is harmless anyway: ``claim_job`` is exclusive and drops it.
    """
    grace = ctx.settings.requeue_stale_queued_s
    if grace <= 0:
        return []
    with ctx.session() as session:
        stale = jobs.stale_queued_jobs(session, grace)
        queued = jobs.count_queued(session) if stale else 0
    if not stale:
        return []
    depth = ctx.queue_depth()
    if depth is not None and depth >= queued:
        return []
    sent: list[str] = []
    for job_id in stale:
        with ctx.session() as session:
            previous = jobs.take_resend(session, job_id, grace)
        if previous is None:
            continue  # claimed, cancelled or re-sent by another reaper meanwhile
        try:
            ctx.enqueue(job_id)
        except Exception:
            with ctx.session() as session:
                jobs.return_resend(session, job_id, previous)
            raise  # the broker is down: the next pass tries again
        reason = (f"no worker claimed this job for {grace:g} s and the queue holds "
                  f"{'an unknown number of' if depth is None else depth} message(s) for {queued} queued "
                  "job(s): sent to the queue again")
        with ctx.session() as session:
            jobs.append_log(session, job_id, reason)
        log.warning("job %s: %s", job_id, reason)
        sent.append(job_id)
    return sent


def discard_final_messages(ctx: WorkerContext) -> int:
    """Remove the broker messages of final jobs at once (``worker.broker_cleanup``) instead of leaving
    them for the visibility timeout; returns how many went."""
    if ctx.discard_messages is None:
        return 0
    count = ctx.discard_messages(ctx)
    if count:
        log.info("discarded %d broker message(s) of finished jobs", count)
    return count


def reaper_interval(lease_s: float, configured: float | None = None) -> float:
    """Often enough to notice a dead worker within about half a lease, never busier than once a second
    (unless configured explicitly, e.g. in tests)."""
    if configured is not None and configured > 0:
        return configured
    return min(30.0, max(1.0, lease_s / 2))


def report_alive(ctx: WorkerContext, worker: str, pools: list[str]) -> None:
    """This worker's heartbeat row (the API's /metrics lists live workers per pool)."""
    with ctx.session() as session:
        metrics_store.beat(session, worker, pools)


class Reaper:
    def __init__(self, ctx: WorkerContext, interval_s: float | None = None,
                 identity: tuple[str, list[str]] | None = None) -> None:
        self.ctx = ctx
        self.identity = identity  # (node name, pools served): reported alive on every pass
        self.interval_s = interval_s or reaper_interval(ctx.settings.worker_lease_s,
                                                        ctx.settings.reaper_interval_s)
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
            try:
                resend_stale_queued(self.ctx)
            except Exception:  # noqa: BLE001 - same: the jobs stay queued and are retried next round
                log.exception("re-sending stale queued jobs failed")
            try:
                discard_final_messages(self.ctx)
            except Exception:  # noqa: BLE001 - the messages stay until the next round
                log.exception("discarding the broker messages of finished jobs failed")
            if self.identity is not None:
                try:
                    report_alive(self.ctx, *self.identity)
                except Exception:  # noqa: BLE001 - the heartbeat row is refreshed next round
                    log.exception("recording this worker's heartbeat failed")
            if self._stop.wait(self.interval_s):
                return
