"""``DatabaseHooks``: the pipeline's callbacks, adapted to a job row through a ``JobReporter``."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from glai_common import jobs
from glai_core.hooks import Event, Hooks
from worker.reporter import JobReporter

log = logging.getLogger(__name__)

# Why training was asked to stop; the runner maps it to the job's final state.
STOP_CANCEL, STOP_TIMEOUT, STOP_LEASE_LOST, STOP_SHUTDOWN = "cancel", "timeout", "lease_lost", "shutdown"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class DatabaseHooks(Hooks):
    """Never touches the database itself: buffers go to the reporter, whose thread does the writes.

    ``should_stop`` reads flags the reporter refreshes (cancel about every second, lease with each
    heartbeat) and the attempt's deadline, so polling it every step costs nothing.
    """

    def __init__(self, reporter: JobReporter, checkpoint_dir: Path | None, deadline: float,
                 shutdown: threading.Event | None = None, checkpoint_interval_s: float = 0.0) -> None:
        self.reporter = reporter
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_interval_s = checkpoint_interval_s
        self.deadline = deadline  # time.monotonic() value
        self.shutdown = shutdown
        self.stop_reason: str | None = None
        self.current_phase: str | None = None
        # What this attempt saw, for a partial summary when it has to stop early (e.g. a timeout).
        self.phase_summaries: dict[str, dict[str, Any]] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}
        self._phase_started: dict[str, float] = {}  # monotonic start of each phase, for its duration

    def on_phase_start(self, phase: str) -> None:
        self.current_phase = phase
        self._phase_started[phase] = time.monotonic()
        self.reporter.phase(phase)
        self.reporter.log(f"[{phase}] started")

    def on_event(self, event: Event) -> None:
        self.last_metrics[event.phase] = {"step": float(event.step), **event.metrics}
        self.reporter.points([jobs.Point(name, event.phase, event.step, float(value), event.wall_time)
                              for name, value in event.metrics.items()])
        self.reporter.progress(event.progress, event.step)
        metrics = " ".join(f"{name}={_fmt(value)}" for name, value in event.metrics.items())
        self.reporter.log(f"[{event.phase}] step {event.step}/{event.total_steps} {metrics}".rstrip())

    def on_phase_end(self, phase: str, summary: dict[str, float]) -> None:
        details = " ".join(f"{name}={_fmt(value)}" if isinstance(value, int | float) else f"{name}={value}"
                           for name, value in summary.items())
        self.reporter.log(f"[{phase}] done {details}".rstrip())
        self.phase_summaries[phase] = dict(summary)
        started = self._phase_started.pop(phase, None)
        if started is not None:
            self.reporter.phase_duration(phase, time.monotonic() - started)
        try:
            self.reporter.flush()
        except Exception:  # noqa: BLE001 - the database is away: the batch stays buffered for the thread
            log.warning("flushing the end of phase %s failed; the reporter retries it", phase)

    def should_stop(self) -> bool:
        if self.stop_reason is None:
            if self.reporter.lease_lost:
                self.stop_reason = STOP_LEASE_LOST
            elif self.reporter.cancel_requested:
                self.stop_reason = STOP_CANCEL
            elif time.monotonic() > self.deadline:
                self.stop_reason = STOP_TIMEOUT
            elif self.shutdown is not None and self.shutdown.is_set():
                self.stop_reason = STOP_SHUTDOWN
        return self.stop_reason is not None
