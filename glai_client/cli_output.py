"""What every `glai` command prints through: consoles, one-line errors with their exit status, tables,
and following a job.

Piped or redirected output is read by programs (grep, cut, another script): rich would cut tables and
wrap lines at 80 columns there ("succeed…"), so without a terminal lines are as long as they need.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from glai_client.client import GlaiClient
from glai_client.config import api_key, api_url
from glai_client.progress import job_progress

PIPE_WIDTH = 4096


def _width(stream: TextIO) -> int | None:
    isatty = getattr(stream, "isatty", None)
    return None if isatty is not None and isatty() else PIPE_WIDTH


console = Console(width=_width(sys.stdout))
err = Console(stderr=True, width=_width(sys.stderr))


def client() -> GlaiClient:
    """GLAI_API_URL and GLAI_API_KEY, else the local key `glai serve` wrote (``glai_client.config``)."""
    return GlaiClient(api_url(), api_key())


def fail(exc: Exception) -> typer.Exit:
    """The API refused or could not be reached: one line, status 1."""
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
    return typer.Exit(1)


def bad_input(exc: Exception) -> typer.Exit:
    """A value given on the command line (or a local file) cannot be used: one line, status 2."""
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
    return typer.Exit(2)


def table(*columns: str) -> Table:
    """A table whose id column is never cut: ids are what users copy into the next command."""
    result = Table()
    for name in columns:
        result.add_column(name, no_wrap=name == "id", min_width=32 if name == "id" else None)
    return result


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data))


def next_page(page: dict[str, Any]) -> None:
    """On stderr, so stdout stays the table alone."""
    if page.get("next_cursor"):
        err.print(f"more: --cursor {page['next_cursor']}", highlight=False, soft_wrap=True)


CursorOption = Annotated[str | None, typer.Option(help="When listing: `next_cursor` of the previous page "
                                                       "(printed after a full page).")]


def watch_until_done(api: GlaiClient, job_id: str) -> None:
    """Progress bars until the job is final, then its final state; a failed job exits with status 1."""
    from glai_client.watch import watch as watch_job

    job = watch_job(api, job_id, console)
    reading = job_progress(job)
    console.print(f"job {job['id']} {job['state']}"
                  + (f" in {reading.stopped_in}" if reading.stopped_in else ""), highlight=False)
    if job["state"] == "failed":
        console.print(f"[red]{escape(str(job.get('failure_kind')))}: "
                      f"{escape(str(job.get('failure_message')))}[/red]")
        raise typer.Exit(1)
