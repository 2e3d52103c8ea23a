"""`glai submit --parent/--rows/--appended/--phase2/--sweep` and `glai merge` against a live API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from glai_client.cli import app
from glai_client.job_options import BadInput
from glai_client.lineage_options import apply, sweep_values
from glai_common.models import Artifact, Job
from tests.api.helpers import Api
from tests.api.test_cli import cli_env, ident, run  # noqa: F401 - the fixture

runner = CliRunner()


def _dataset(tmp_path: Path, name: str, seed: int) -> str:
    path = tmp_path / f"{name}.npz"
    rng = np.random.default_rng(seed)
    np.savez(path, X=rng.normal(size=(40, 3)).astype(np.float32), y=np.arange(40) % 2)
    return ident(run("datasets", "upload", str(path), "--name", name))


def _finish(api: Api, job_id: str) -> None:
    with api.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state="succeeded"))
        session.add(Artifact(job_id=job_id, name="trained", storage_key=f"jobs/{job_id}/trained.safetensors",
                             sha256="0" * 64, size_bytes=1, meta={}))
        session.commit()


def test_children_sweeps_and_merges_from_the_command_line(cli_env: Api, tmp_path: Path) -> None:  # noqa: F811
    parent = ident(run("submit", _dataset(tmp_path, "a", 0), "--hidden", "8"))
    _finish(cli_env, parent)
    child = ident(run("submit", _dataset(tmp_path, "b", 1), "--parent", parent, "--rows", "own",
                      "--phase2", "refit"))
    with cli_env.session() as session:
        job = session.get(Job, child)
        assert job is not None and job.parent_job_id == parent
        assert (job.spec["lineage"]["rows"], job.spec["lineage"]["phase2"]) == ("own", "refit")
    _finish(cli_env, child)
    merged = run("merge", parent, child, "--name", "both")
    assert "merge of 2 jobs" in merged
    with cli_env.session() as session:
        assert session.get(Job, ident(merged)).spec["merge"]["job_ids"] == [parent,
                                                                            child]  # type: ignore[union-attr]
    sweep = ident(run("submit", _dataset(tmp_path, "c", 2), "--sweep", "lr=1e-3,3e-3", "--sweep", "seed=0,1",
                      "--sweep", "halving=2"))
    with cli_env.session() as session:
        spec = session.get(Job, sweep).spec  # type: ignore[union-attr]
        assert spec["sweep"] == {"lr": [1e-3, 3e-3], "seed": [0, 1],
                                 "halving": {"eta": 2, "first_rung": None}}
    refused = runner.invoke(app, ["merge", parent, parent])
    assert refused.exit_code == 1 and "distinct" in refused.output
    bad = runner.invoke(app, ["submit", "0" * 32, "--sweep", "depth=2"])
    assert bad.exit_code == 2 and "--sweep" in bad.output
    orphan = runner.invoke(app, ["submit", "0" * 32, "--rows", "own"])
    assert orphan.exit_code == 2 and "--parent" in orphan.output


def test_sweep_options_parse_each_key_once() -> None:
    assert sweep_values(["lr=1e-3, 3e-3", "reduction_factor=auto,2", "seed=0,1"]) == \
        {"lr": [1e-3, 3e-3], "reduction_factor": ["auto", 2.0], "seed": [0, 1]}
    assert sweep_values(["seed=0,1", "halving=3"]) == {"seed": [0, 1], "halving": {"eta": 3}}
    for items, message in ((["lr"], "KEY=V1,V2"), (["seed=a"], "whole numbers"), (["lr=1,"], "empty"),
                           (["halving=half"], "halving"),
                           (["lr=1", "lr=2"], "twice"), (["lr=x"], "not a number")):
        with pytest.raises(BadInput, match=message):
            sweep_values(items)
    assert apply({}, "p" * 32, None, True, None, []) == {"parent_job_id": "p" * 32,
                                                         "incremental": {"data": "appended"}}
    with pytest.raises(BadInput, match="--rows"):
        apply({}, "p" * 32, "all", False, None, [])
