"""`glai watch`: one rich progress bar per phase (embedding, structural, ...), fed by polling the job.

The bars are drawn from ``glai_client.progress.job_progress``, the same reading ``GlaiClient.wait``
hands to ``on_progress``. No embedding bar means the cached features were used. A job that fails or is
cancelled keeps its bars where they were and loses the state row (a "failed 100%" bar would read as
done); the CLI prints the final state on the line after.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from glai_client.client import GlaiClient, Job
from glai_client.progress import JobProgress


def watch(client: GlaiClient, job_id: str, console: Console, poll_s: float = 1.0) -> Job:
    bars: dict[str, TaskID] = {}
    columns = (TextColumn("{task.description:<13}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        status: TaskID | None = progress.add_task("queued", total=None, note=f"job {job_id[:8]}")

        def update(reading: JobProgress) -> None:
            nonlocal status
            for phase, fraction in reading.phases.items():
                if phase not in bars:
                    bars[phase] = progress.add_task(phase, total=1.0, note="")
                current = phase == reading.phase and reading.step is not None
                note = f"{reading.step_name} {reading.step}" if current else ""
                progress.update(bars[phase], completed=fraction, note=note)
            if status is None:
                return
            if reading.state == "succeeded":
                progress.update(status, description=reading.state, total=1, completed=1)
            elif reading.finished:
                progress.remove_task(status)
                status = None
            else:
                progress.update(status, description=reading.state)

        return client.wait(job_id, poll_s=poll_s, on_progress=update)

