"""Moves a running job's progress to the database off the training thread.

Training only appends to in-memory buffers (no database round trip per step). A daemon thread drains
them: curve points and log lines about every ``flush_interval_s``; progress together with the lease
renewal every ``heartbeat_interval_s``; the cancel flag about every ``cancel_poll_s``. The lease is
renewed by this thread, not by training steps, so a single epoch longer than the lease never looks like
a dead worker. ``flush()`` drains synchronously (phase ends, before the final state).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from glai_common import jobs
from worker.context import WorkerContext

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    phases: list[str] = field(default_factory=list)
    points: list[jobs.Point] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    progress: tuple[float, int | None] | None = None

    def empty(self) -> bool:
        return not (self.phases or self.points or self.lines or self.progress)


class JobReporter:
    def __init__(self, ctx: WorkerContext, job_id: str, worker_id: str, *, flush_interval_s: float = 1.0,
                 cancel_poll_s: float = 1.0) -> None:
        self.ctx, self.job_id, self.worker_id = ctx, job_id, worker_id
        self.lease_s = float(ctx.settings.worker_lease_s)
        self.heartbeat_s = float(ctx.settings.heartbeat_interval_s)
        self.flush_s, self.cancel_s = flush_interval_s, cancel_poll_s
        self.cancel_requested = False
        self.lease_lost = False
        self._pending = _Pending()
        self._buffer_lock = threading.Lock()  # guards _pending (training thread vs. drain)
        self._io_lock = threading.Lock()  # one drain at a time, in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = self._last_cancel = self._last_flush = time.monotonic()

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
            beat = now - self._last_beat >= self.heartbeat_s
            due = beat or now - self._last_flush >= self.flush_s or now - self._last_cancel >= self.cancel_s
            if not due:
                continue
            try:
                self._drain(beat=beat)
            except Exception:  # noqa: BLE001 - a database hiccup must not kill training; retried next tick
                log.exception("reporting progress of job %s failed; will retry", self.job_id)

    # --- the only place that writes -----------------------------------------------------------------

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
                    if beat:
                        fraction, epoch = pending.progress or (None, None)
                        result = jobs.heartbeat(session, self.job_id, self.worker_id, lease_s=self.lease_s,
                                                progress=fraction, epoch=epoch)
                        if result is None:
                            self.lease_lost = True
                        else:
                            self.cancel_requested = result.cancel_requested
                        self._last_beat = self._last_cancel = now
                    elif now - self._last_cancel >= self.cancel_s:
                        self.cancel_requested = jobs.read_cancel_flag(session, self.job_id)
                        self._last_cancel = now
            except BaseException:
                self._restore(pending)
                raise
            if not beat and pending.progress is not None:
                self._restore(_Pending(progress=pending.progress))  # waits for the next heartbeat
            self._last_flush = now
