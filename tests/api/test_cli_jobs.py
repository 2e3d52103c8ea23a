"""`glai` job commands against a live API: options not given keep their defaults, piped output is never
cut, finished jobs read as finished, and the jobs group (list with cursors, delete, resume), downloads
into a directory and unknown artifacts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from glai_client.cli import app
from glai_common.models import Job
from glai_core.config import StructuralConfig
from tests.api.helpers import Api, insert_job

runner = CliRunner()


@pytest.fixture
def cli_env(server: tuple[Api, str], monkeypatch: pytest.MonkeyPatch) -> Api:
    api, url = server
    monkeypatch.setenv("GLAI_API_URL", url)
    monkeypatch.setenv("GLAI_API_KEY", api.key)
    return api


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def ident(output: str) -> str:
    match = re.search(r"\b[0-9a-f]{32}\b", output)
    assert match, output
    return match.group(0)


def test_structural_epochs_keeps_the_other_defaults(cli_env: Api) -> None:
    ds = ident(run("datasets", "builtin", "iris"))
    job = ident(run("submit", ds, "--structural-epochs", "5"))
    with cli_env.session() as session:
        structural = session.get(Job, job).spec["config"]["structural"]  # type: ignore[union-attr]
    assert structural["max_epochs"] == 5
    assert structural["min_epochs"] == StructuralConfig().min_epochs  # not lowered to 2


def _failed(api: Api, ds: str, phase: str, kind: str = "timeout") -> str:
    job = insert_job(api, ds, "failed", phase=phase)
    with api.session() as session:
        session.execute(update(Job).where(Job.id == job).values(
            progress=0.4, epoch=2, failure_kind=kind, failure_message="the job exceeded its time limit"))
        session.commit()
    return job


def test_piped_output_is_not_cut_and_finished_jobs_read_finished(cli_env: Api) -> None:
    ds = ident(run("datasets", "builtin", "iris"))
    done = insert_job(cli_env, ds, "succeeded", phase="exporting")
    with cli_env.session() as session:
        session.execute(update(Job).where(Job.id == done).values(progress=1.0))
        session.commit()
    failed = _failed(cli_env, ds, "pruning")
    listing = run("status")
    rows = {line.split()[1]: line for line in listing.splitlines() if re.search(r"[0-9a-f]{32}", line)}
    assert "succeeded" in rows[done] and "…" not in listing  # CliRunner's output is a pipe
    assert "exporting" not in rows[done] and "pruning" in rows[failed] and "40%" not in rows[failed]
    shown = run("status", done)
    assert f"job {done}: succeeded" in shown and "exporting 100%" not in shown
    assert f"job {failed}: failed in pruning" in run("status", failed)

    result = runner.invoke(app, ["watch", failed])
    assert result.exit_code == 1, result.output
    assert not [line for line in result.output.splitlines() if "failed" in line and "100%" in line], \
        result.output
    assert re.search(r"pruning\s.*40%", result.output), result.output  # where it stopped
    assert f"job {failed} failed in pruning" in result.output


def test_lists_page_with_cursor_and_jobs_delete(cli_env: Api) -> None:
    ds = ident(run("datasets", "builtin", "iris"))
    jobs = [insert_job(cli_env, ds, "succeeded", created_offset_s=-i) for i in range(3)]  # newest first
    first = runner.invoke(app, ["jobs", "list", "--limit", "2"])
    assert first.exit_code == 0, first.output
    cursor = re.search(r"--cursor (\S+)", first.stderr)
    assert cursor, first.output
    assert jobs[0] in first.stdout and jobs[1] in first.stdout and jobs[2] not in first.stdout
    second = run("status", "--limit", "2", "--cursor", cursor.group(1))
    assert jobs[2] in second and jobs[0] not in second
    assert "--cursor" not in runner.invoke(app, ["datasets", "list", "--limit", "5"]).stderr
    assert f"deleted {jobs[2]}" in run("jobs", "delete", jobs[2])
    gone = runner.invoke(app, ["status", jobs[2]])
    assert gone.exit_code == 1 and "404" in gone.output
    running = insert_job(cli_env, ds, "running")
    refused = runner.invoke(app, ["jobs", "delete", running])
    assert refused.exit_code == 1 and "running" in refused.output


def test_download_into_a_directory_keeps_the_artifact_name(cli_env: Api, tmp_path: Path) -> None:
    ds = ident(run("datasets", "builtin", "iris"))
    job = insert_job(cli_env, ds, "succeeded", artifact=b"weights" * 10)
    existing = tmp_path / "models"
    existing.mkdir()
    run("download", job, "trained", "-o", str(existing))
    assert (existing / f"{job}-trained.safetensors").read_bytes() == b"weights" * 10
    fresh = tmp_path / "new"
    run("download", job, "trained", "-o", f"{fresh}/")
    assert (fresh / f"{job}-trained.safetensors").read_bytes() == b"weights" * 10
    unknown = runner.invoke(app, ["download", job, "pruned-50", "-o", str(existing)])
    assert unknown.exit_code == 1 and "404" in unknown.output
    assert "pruned-50" in unknown.output and "its artifacts: trained" in unknown.output


def test_python_client_finds_the_local_key_like_the_cli(server: tuple[Api, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from glai_client.client import GlaiClient
    from glai_client.progress import JobProgress

    api, url = server
    (tmp_path / "local_api_key").write_text(api.key + "\n")  # what `glai serve` leaves behind
    monkeypatch.setenv("GLAI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GLAI_API_URL", url)
    monkeypatch.delenv("GLAI_API_KEY", raising=False)
    ds = ident(run("datasets", "builtin", "iris"))
    failed = _failed(api, ds, "pruning")
    readings: list[JobProgress] = []
    with GlaiClient() as client:
        assert client.get_job(failed)["state"] == "failed"
        client.wait(failed, on_progress=readings.append)
    reading = readings[-1]
    assert (reading.state, reading.phase, reading.stopped_in) == ("failed", None, "pruning")
    assert reading.phases == {"pruning": 0.4} and "timeout" in (reading.failure or "")
    assert reading.line() == f"job {failed[:8]} failed in pruning (timeout: the job exceeded its time limit)"


def test_submit_with_a_name_and_tags_and_list_by_name(cli_env: Api) -> None:
    ds = ident(run("datasets", "builtin", "iris"))
    job = ident(run("submit", ds, "--name", "iris-run", "--tag", "sweep", "--tag", "a b"))
    with cli_env.session() as session:
        stored = session.get(Job, job)
        assert stored is not None and (stored.name, stored.tags) == ("iris-run", ["sweep", "a b"])
    other = ident(run("submit", ds, "--name", "other"))
    listed = run("jobs", "list", "--name", "iris-run")
    assert job in listed and other not in listed and "#sweep" in listed
    assert job in run("jobs", "list", "--dataset", ds)
    tagged = run("jobs", "list", "--tag", "sweep", "--tag", "a b")
    assert job in tagged and other not in tagged
    assert job not in run("jobs", "list", "--tag", "sweep", "--tag", "nope")
