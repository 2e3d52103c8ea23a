"""The `glai` commands against a live API (and, for admin, the database directly)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glai_client.cli import app
from glai_common.models import Job
from tests.api.helpers import Api, insert_job

runner = CliRunner()


@pytest.fixture
def cli_env(server: tuple[Api, str], monkeypatch: pytest.MonkeyPatch) -> Api:
    api, url = server
    monkeypatch.setenv("GLAI_API_URL", url)
    monkeypatch.setenv("GLAI_API_KEY", api.key)
    return api


def ident(output: str) -> str:
    match = re.search(r"\b[0-9a-f]{32}\b", output)
    assert match, output
    return match.group(0)


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_datasets_submit_status_cancel(cli_env: Api, tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, X=np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32), y=np.arange(40) % 2)
    out = run("datasets", "upload", str(data), "--name", "cli")
    ds = ident(out)
    assert "40 samples" in out and ds in run("datasets", "list")
    args = ("submit", ds, "--hidden", "8", "--structural-epochs", "1", "--idempotency-key", "x")
    job = ident(run(*args))
    assert cli_env.enqueued == [job]
    assert ident(run(*args)) == job
    assert "queued" in run("status", job) and job in run("status")
    assert "cancelled" in run("cancel", job)
    bad = runner.invoke(app, ["submit", ds, "--hidden", "8,8,8,8,8"])
    assert bad.exit_code == 1 and "at most 4 hidden layers" in bad.output
    fp32 = ident(run("submit", ds, "--hidden", "8", "--precision", "fp32"))
    with cli_env.session() as session:
        assert session.get(Job, fp32).spec["config"]["precision"] == "fp32"
    bad = runner.invoke(app, ["submit", ds, "--precision", "fp16"])
    assert bad.exit_code == 1 and "precision" in bad.output
    assert "deleted" not in runner.invoke(app, ["datasets", "delete", ds]).output  # used by a job: 409


def test_download_and_logs(cli_env: Api, tmp_path: Path) -> None:
    ds = ident(run("datasets", "builtin", "iris"))
    job = insert_job(cli_env, ds, "succeeded", artifact=b"weights" * 100)
    target = tmp_path / "m.safetensors"
    assert "saved" in run("download", job, "trained", "-o", str(target))
    assert target.read_bytes() == b"weights" * 100
    from glai_common.jobs import append_log

    with cli_env.session() as session:
        append_log(session, job, "hello\nworld")
        session.commit()
    assert run("logs", job) == "hello\nworld\n"


def test_admin_keys_on_the_database(cli_env: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLAI_DATABASE_URL", cli_env.services.settings.resolved_database_url)
    result = runner.invoke(app, ["admin", "create-key", "--owner", "carol"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[0]
    assert key.startswith("glai_")
    prefix = key[:12]
    assert prefix in run("admin", "list-keys")
    assert "revoked 1" in run("admin", "revoke-key", prefix)
    assert runner.invoke(app, ["admin", "revoke-key", prefix]).exit_code == 1


def test_watch_a_finished_job(cli_env: Api) -> None:
    ds = ident(run("datasets", "builtin", "iris"))
    job = insert_job(cli_env, ds, "succeeded", phase="baseline")
    assert f"job {job} succeeded" in run("watch", job)


def test_local_key_is_created_once_and_replaced_when_unknown(cli_env: Api, tmp_path: Path) -> None:
    from glai_client.serve import ensure_local_key

    url = cli_env.services.settings.resolved_database_url
    key, created = ensure_local_key(tmp_path, url)
    assert created and (tmp_path / "local_api_key").stat().st_mode & 0o777 == 0o600
    assert ensure_local_key(tmp_path, url) == (key, False)
    (tmp_path / "local_api_key").write_text("glai_stale\n")
    new_key, created = ensure_local_key(tmp_path, url)
    assert created and new_key != key
