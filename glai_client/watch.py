"""`glai watch`: one rich progress bar per phase (embedding, structural, ...), fed by polling the job.

A phase that started and ended between two polls is still shown (from the job's phase transitions), so a
quick embedding phase or a cache hit reads correctly: no embedding bar means the cached features were used.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from glai_client.client import FINAL_STATES, GlaiClient, Job

# What the job's step counter means within a phase.
STEP_NAMES = {"embedding": "batch", "pruning": "level"}


def _phases(job: Job) -> list[str]:
    """Phases in the order they started, from the transitions plus the current one."""
    seen: list[str] = []
    for transition in job.get("transitions") or []:
        if transition.get("field") == "phase" and transition.get("to_value") not in seen:
            seen.append(transition["to_value"])
    phase = job.get("phase")
    if phase and phase not in seen:
        seen.append(phase)
    return seen


def watch(client: GlaiClient, job_id: str, console: Console, poll_s: float = 1.0) -> Job:
    bars: dict[str, TaskID] = {}
    columns = (TextColumn("{task.description:<13}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        status = progress.add_task("state", total=None, note="")

        def update(job: Job) -> None:
            progress.update(status, description=job["state"], note=f"job {job['id'][:8]}")
            current = job.get("phase")
            phases = _phases(job)
            for index, phase in enumerate(phases):
                if phase not in bars:
                    bars[phase] = progress.add_task(phase, total=1.0, note="")
                if index < len(phases) - 1:  # a later phase has started: this one is done
                    progress.update(bars[phase], completed=1.0)
            if current:
                step = job.get("epoch")
                label = STEP_NAMES.get(current, "epoch")
                progress.update(bars[current], completed=float(job.get("progress") or 0.0),
                                note=f"{label} {step}" if step is not None else "")
            if job["state"] in FINAL_STATES:
                progress.update(status, total=1, completed=1)
                if job["state"] == "succeeded":
                    for task in bars.values():
                        progress.update(task, completed=1.0)

        return client.wait(job_id, poll_s=poll_s, on_update=update)
