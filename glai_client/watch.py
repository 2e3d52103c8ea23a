"""`glai watch`: one rich progress bar per phase, fed by polling the job."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from glai_client.client import FINAL_STATES, GlaiClient, Job


def watch(client: GlaiClient, job_id: str, console: Console, poll_s: float = 1.0) -> Job:
    bars: dict[str, TaskID] = {}
    columns = (TextColumn("{task.description:<13}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        status = progress.add_task("state", total=None, note="")

        def update(job: Job) -> None:
            progress.update(status, description=job["state"], note=f"job {job['id'][:8]}")
            phase = job.get("phase")
            if phase and phase not in bars:
                for previous in bars.values():  # a new phase means the earlier ones are done
                    progress.update(previous, completed=1.0)
                bars[phase] = progress.add_task(phase, total=1.0, note="")
            if phase:
                epoch = job.get("epoch")
                progress.update(bars[phase], completed=float(job.get("progress") or 0.0),
                                note=f"epoch {epoch}" if epoch is not None else "")
            if job["state"] in FINAL_STATES:
                progress.update(status, total=1, completed=1)
                if job["state"] == "succeeded":
                    for task in bars.values():
                        progress.update(task, completed=1.0)

        return client.wait(job_id, poll_s=poll_s, on_update=update)
