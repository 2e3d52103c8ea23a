"""`glai jobs ...`: list (with cursors), resume and delete; `glai status` without a job id lists too."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from glai_client.cli_output import (
    CursorOption,
    client,
    console,
    fail,
    next_page,
    print_json,
    table,
    watch_until_done,
)
from glai_client.client import GlaiError
from glai_client.progress import job_progress

jobs_app = typer.Typer(help="List, resume and delete jobs (submit, status, watch, cancel: top level).",
                       no_args_is_help=True)


def list_jobs(state: str | None, limit: int, cursor: str | None, as_json: bool, name: str | None = None,
              dataset_id: str | None = None, tags: list[str] | None = None) -> None:
    try:
        with client() as api:
            page = api.list_jobs(state=state, limit=limit, cursor=cursor, name=name, dataset_id=dataset_id,
                                 tags=tags)
    except GlaiError as exc:
        raise fail(exc) from exc
    if as_json:
        print_json(page)
        return
    rows = table("id", "state", "phase", "progress", "created", "name")
    for job in page["items"]:
        reading = job_progress(job)
        where = reading.phase or reading.stopped_in or ""  # a finished job has no phase in progress
        done = "" if reading.fraction is None else f"{reading.fraction:.0%}"
        label = " ".join([escape(job.get("name") or ""), *(f"#{escape(t)}" for t in job.get("tags") or [])])
        rows.add_row(job["id"], job["state"], where, done, job["created_at"][:19], label.strip())
    console.print(rows)
    next_page(page)


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str | None, typer.Option(help="Only this state.")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    cursor: CursorOption = None,
    name: Annotated[str | None, typer.Option(help="Only jobs submitted with this --name.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only jobs on this dataset id.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Only jobs with this --tag (repeat: all of them).")
                   ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """List your jobs, newest first (`glai status` without a job id lists them too)."""
    list_jobs(state, limit, cursor, as_json, name=name, dataset_id=dataset, tags=tag)


@jobs_app.command("delete")
def jobs_delete(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Delete a finished job with its curves, logs, checkpoints and models (refused while it runs)."""
    try:
        with client() as api:
            api.delete_job(job_id)
    except GlaiError as exc:
        raise fail(exc) from exc
    console.print(f"deleted {job_id}", highlight=False)


@jobs_app.command("resume")
def jobs_resume(
    job_id: Annotated[str, typer.Argument(help="Job id of a failed (e.g. timed-out) job.")],
    time_limit: Annotated[int | None, typer.Option(help="Seconds of running time it gets from now on "
                                                        "(default: its own time limit again).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it ends.")] = False,
) -> None:
    """Queue a failed or timed-out job again: it continues from its checkpoints (within its attempts)."""
    try:
        with client() as api:
            job = api.resume_job(job_id, time_limit)
            console.print(f"job [bold]{job['id']}[/bold] {job['state']}")
            if watch:
                watch_until_done(api, job["id"])
    except GlaiError as exc:
        raise fail(exc) from exc
