"""What a job's progress looks like to a person: one reading shared by `glai watch`, `glai status` and
``GlaiClient.wait(on_progress=...)``, so the CLI and a Python caller always agree.

A phase that started and ended between two polls is still listed (from the job's phase transitions).
Only a job that is *running* has a current phase; a finished one reports where it stopped instead: a
succeeded job has every phase at 100 %, a failed or cancelled one keeps the phase it was in at the
fraction it had reached (never "failed 100%").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATES = frozenset({"running", "cancelling"})
# What the job's step counter means within a phase.
STEP_NAMES = {"embedding": "batch", "pruning": "level"}


@dataclass(frozen=True)
class JobProgress:
    """One poll of a job, read for display."""

    job_id: str
    state: str
    phase: str | None  # the phase running now; None while queued and once the job is final
    fraction: float | None  # of ``phase``
    step: int | None  # of ``phase``: an epoch, a batch (embedding) or a sparsity level (pruning)
    step_name: str
    phases: dict[str, float] = field(default_factory=dict)  # every phase started, in order -> fraction
    stopped_in: str | None = None  # failed or cancelled: the phase it was in
    failure: str | None = None  # failed: "kind: message"

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def line(self) -> str:
        """One line of text, e.g. ``running structural 40% epoch 12`` or ``failed in pruning (timeout)``."""
        text = f"job {self.job_id[:8]} {self.state}"
        if self.phase is not None:
            text += f" {self.phase} {self.fraction or 0.0:.0%}"
            if self.step is not None:
                text += f" {self.step_name} {self.step}"
        elif self.stopped_in is not None:
            text += f" in {self.stopped_in}"
        if self.failure:
            text += f" ({self.failure})"
        return text


def started_phases(job: Mapping[str, Any]) -> list[str]:
    """Phases in the order they started, from the transitions plus the current one."""
    seen: list[str] = []
    for transition in job.get("transitions") or []:
        if transition.get("field") == "phase" and transition.get("to_value") not in seen:
            seen.append(transition["to_value"])
    phase = job.get("phase")
    if phase and phase not in seen:
        seen.append(phase)
    return seen


def job_progress(job: Mapping[str, Any]) -> JobProgress:
    state = str(job["state"])
    names = started_phases(job)
    last = job.get("phase") or (names[-1] if names else None)
    fraction = float(job.get("progress") or 0.0)
    phases = {name: 1.0 for name in names}
    if last is not None and state != "succeeded":
        phases[last] = fraction  # earlier phases are done; the last one got as far as it got
    step = job.get("epoch")
    failure = None
    if state == "failed":
        failure = ": ".join(str(v) for v in (job.get("failure_kind"), job.get("failure_message")) if v)
    active = state in ACTIVE_STATES
    return JobProgress(
        job_id=str(job["id"]), state=state, phase=last if active else None,
        fraction=fraction if active and last is not None else None,
        step=int(step) if active and step is not None else None,
        step_name=STEP_NAMES.get(last or "", "epoch"), phases=phases,
        stopped_in=last if state in {"failed", "cancelled"} else None, failure=failure or None)
