"""Moves a running job's progress to the database off the training thread.

Training only appends to in-memory buffers (no database round trip per step). A daemon thread drains
them: curve points and log lines about every ``flush_interval_s``; progress together with the lease
renewal every ``heartbeat_interval_s``; the cancel flag about every ``cancel_poll_s``. The lease is
renewed by this thread, not by training steps, so a single epoch longer than the lease never looks like
a dead worker. ``flush()`` drains synchronously (phase ends, before the final state).

Database errors never reach training: a failed drain puts its batch back and the next tick retries it
(the lease simply is not renewed meanwhile). The thread also drives cancel escalation (escalation.py):
it notes when it first saw the cancel and calls ``escalation.check`` every tick, even while the
database is unreachable.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from glai_common import jobs, metrics_store
from worker.context import WorkerContext
from worker.escalation import CancelEscalation

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    phases: list[str] = field(default_factory=list)
    points: list[jobs.Point] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    progress: tuple[float, int | None] | None = None
    durations: list[tuple[str, float]] = field(default_factory=list)  # finished phases, for /metrics

    def empty(self) -> bool:
        return not (self.phases or self.points or self.lines or self.progress or self.durations)


class JobReporter:
    def __init__(self, ctx: WorkerContext, job_id: str, worker_id: str, *, flush_interval_s: float = 1.0,
                 cancel_poll_s: float = 1.0) -> None:
        self.ctx, self.job_id, self.worker_id = ctx, job_id, worker_id
        self.lease_s = float(ctx.settings.worker_lease_s)
        self.heartbeat_s = float(ctx.settings.heartbeat_interval_s)
        self.flush_s, self.cancel_s = flush_interval_s, cancel_poll_s
        self.cancel_requested = False
        self.cancel_since: float | None = None  # monotonic time the cancel was first seen
        self.escalation: CancelEscalation | None = None
        self.lease_lost = False
        self._pending = _Pending()
        self._buffer_lock = threading.Lock()  # guards _pending (training thread vs. drain)
        self._io_lock = threading.Lock()  # one drain at a time, in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = self._last_cancel = self._last_flush = time.monotonic()
        self._failing_since: float | None = None
        self._last_complaint = 0.0

    # --- called from the training thread: memory only -------------------------------------------------

    def phase(self, phase: str) -> None:
        with self._buffer_lock:
            self._pending.phases.append(phase)
            self._pending.progress = None  # progress belongs to the phase it was reported in

    def points(self, points: list[jobs.Point]) -> None:
        with self._buffer_lock:
            self._pending.points.extend(points)

    def progress(self, fraction: float, epoch: int | None = None) -> None:
        with self._buffer_lock:
            self._pending.progress = (fraction, epoch)

    def log(self, line: str) -> None:
        with self._buffer_lock:
            self._pending.lines.append(line)

    def phase_duration(self, phase: str, seconds: float) -> None:
        with self._buffer_lock:
            self._pending.durations.append((phase, seconds))

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> JobReporter:
        self._thread = threading.Thread(target=self._loop, name=f"glai-reporter-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and drain what is left (best effort: the final state is written elsewhere)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - the caller is already finishing the job
            log.exception("final flush of job %s failed", self.job_id)

    def flush(self) -> None:
        self._drain(beat=True)

    def _loop(self) -> None:
        tick = max(0.05, min(self.flush_s, self.cancel_s, self.heartbeat_s) / 2)
        while not self._stop.wait(tick):
            now = time.monotonic()
            if self.escalation is not None:
                try:
                    self.escalation.check(self.cancel_since, now)
                except Exception:  # noqa: BLE001 - e.g. recording the cancel failed: retried next tick
                    log.exception("escalating the cancel of job %s failed", self.job_id)
            beat = now - self._last_beat >= self.heartbeat_s
            due = beat or now - self._last_flush >= self.flush_s or now - self._last_cancel >= self.cancel_s
            if not due:
                continue
            try:
                self._drain(beat=beat)
                if self._failing_since is not None:
                    log.warning("reporting progress of job %s works again after %.1f s", self.job_id,
                                now - self._failing_since)
                    self._failing_since = None
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not kill training
                if self._failing_since is None:
                    self._failing_since = self._last_complaint = now
                    log.exception("reporting progress of job %s failed; buffering and retrying", self.job_id)
                elif now - self._last_complaint >= 10:
                    self._last_complaint = now
                    log.warning("reporting progress of job %s still failing after %.0f s: %s",
                                self.job_id, now - self._failing_since, type(exc).__name__)

    # --- the only place that writes -----------------------------------------------------------------

    def _set_cancel(self, requested: bool) -> None:
        if requested and self.cancel_since is None:
            self.cancel_since = time.monotonic()
        self.cancel_requested = requested

    def _take(self) -> _Pending:
        with self._buffer_lock:
            pending, self._pending = self._pending, _Pending()
        return pending

    def _restore(self, pending: _Pending) -> None:
        with self._buffer_lock:
            newer = self._pending
            pending.phases.extend(newer.phases)
            pending.points.extend(newer.points)
            pending.lines.extend(newer.lines)
            pending.durations.extend(newer.durations)
            if newer.progress is not None or newer.phases:
                pending.progress = newer.progress
            self._pending = pending

    def _drain(self, beat: bool) -> None:
        with self._io_lock:
            pending = self._take()
            now = time.monotonic()
            try:
                with self.ctx.session() as session:
                    for phase in pending.phases:
                        if not jobs.record_phase(session, self.job_id, self.worker_id, phase):
                            self.lease_lost = True
                    jobs.append_curve_points(session, self.job_id, pending.points)
                    if pending.lines:
                        jobs.append_log(session, self.job_id, "\n".join(pending.lines))
                    for phase, seconds in pending.durations:
                        metrics_store.observe(session, metrics_store.PHASE, phase, seconds)
                    if beat:
                        fraction, epoch = pending.progress or (None, None)
                        result = jobs.heartbeat(session, self.job_id, self.worker_id, lease_s=self.lease_s,
                                                progress=fraction, epoch=epoch)
                        if result is None:
                            self.lease_lost = True
                        else:
                            self._set_cancel(result.cancel_requested)
                        self._last_beat = self._last_cancel = now
                    elif now - self._last_cancel >= self.cancel_s:
                        self._set_cancel(jobs.read_cancel_flag(session, self.job_id))
                        self._last_cancel = now
            except BaseException:
                self._restore(pending)
                raise
            if not beat and pending.progress is not None:
                self._restore(_Pending(progress=pending.progress))  # waits for the next heartbeat
            self._last_flush = now
