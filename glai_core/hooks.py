"""How a caller watches, stops and checkpoints training. The library never prints or logs to stdout.

The worker subclasses ``Hooks`` to write progress and curves to the database and to read the cancel
flag; a notebook user can pass ``Hooks()`` (does nothing) or ``RecordingHooks`` (keeps events in memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PHASES = ("embedding", "structural", "quantitative", "pruning", "baseline", "exporting")


class Cancelled(Exception):
    """Raised inside training when ``Hooks.should_stop()`` turns true; state up to then is checkpointed."""


@dataclass(frozen=True)
class Event:
    """One step boundary: ``step`` counts epochs (or sparsity levels for pruning) within ``phase``.

    ``metrics`` holds the curve points of this step, e.g. train_loss, val_loss, val_accuracy,
    unit_distance, path_distance; ``progress`` is the phase's fraction done in [0, 1].
    """

    phase: str
    step: int
    total_steps: int
    progress: float
    metrics: dict[str, float]
    wall_time: float  # seconds since the phase started (excluding time before a resume)


class Hooks:
    """Override what you need. ``checkpoint_dir`` set: each phase saves there and resumes from there.

    ``checkpoint_interval_s``: a phase checkpoints after an epoch once this long has passed since its
    last checkpoint (0: after every epoch), and always when it finishes or is asked to stop between
    epochs. Small heads train an epoch in tens of milliseconds, where a checkpoint per epoch costs more
    than the few seconds of work a crash could lose.
    """

    checkpoint_dir: Path | None = None
    checkpoint_interval_s: float = 0.0

    def on_phase_start(self, phase: str) -> None:
        """Called when a phase begins (or resumes)."""

    def on_event(self, event: Event) -> None:
        """Called after every step of every phase."""

    def on_phase_end(self, phase: str, summary: dict[str, float]) -> None:
        """Called once per phase with its summary metrics."""

    def should_stop(self) -> bool:
        """Polled between steps; returning True raises ``Cancelled``."""
        return False


@dataclass
class RecordingHooks(Hooks):
    """Keeps every event in memory: handy in notebooks and tests."""

    checkpoint_dir: Path | None = None
    checkpoint_interval_s: float = 0.0
    events: list[Event] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)
    stop_after: int | None = None  # raise Cancelled after this many events (for tests)

    def on_phase_start(self, phase: str) -> None:
        self.phases.append(phase)

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def on_phase_end(self, phase: str, summary: dict[str, float]) -> None:
        self.summaries[phase] = summary

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.events) >= self.stop_after
