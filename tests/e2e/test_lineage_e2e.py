"""Lineage end to end: the real API (uvicorn) and a real Celery worker, PostgreSQL + Redis, jobs driven
over HTTP with the client. A parent keeps its sufficient statistics; a child adds new rows without
phase 1 (only the new rows read); two copies of one structure merge into the union's model; a sweep
trains its grid in one pass and keeps the best of each kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from api.services import api_keys
from glai_client.client import GlaiClient
from glai_common.db import make_engine
from glai_common.migrate import upgrade
from tests.e2e.stack import free_port, service_env, start_api, start_worker, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.postgres, pytest.mark.redis]

SMALL = {"architecture": {"hidden": [32]}, "structural": {"max_epochs": 6, "min_epochs": 2},
         "pruning": {"enabled": False}, "baseline": {"enabled": False}}


def _upload(client: GlaiClient, tmp: Path, name: str, x: np.ndarray, y: np.ndarray) -> str:
    path = tmp / f"{name}.npz"
    np.savez(path, X=x.astype(np.float32), y=y.astype(np.int64))
    return str(client.upload_dataset(path, name=name)["id"])


def _done(client: GlaiClient, job: dict[str, Any]) -> dict[str, Any]:
    done = client.wait(job["id"], timeout=240, poll_s=0.5)
    assert done["state"] == "succeeded", (done.get("failure_kind"), done.get("failure_message"),
                                          client.logs(job["id"])["text"][-3000:])
    return done


def _phases(job: dict[str, Any]) -> list[str]:
    return [t["to_value"] for t in job["transitions"] if t["field"] == "phase"]


def test_incremental_merge_and_sweep_through_the_service(postgres_url: str, redis_url: str,
                                                         tmp_path: Path) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        key = api_keys.create_key(session, "lineage").key
    engine.dispose()
    env = service_env(tmp_path / "data", database_url=postgres_url, broker_url=redis_url, export_onnx="false")
    env["OMP_NUM_THREADS"] = "1"
    port = free_port()
    processes = [start_worker(env, tmp_path), start_api(env, port, tmp_path)]
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, processes)
        with GlaiClient(url, key) as client:
            _flow(client, tmp_path, tmp_path / "data" / "storage")
    except BaseException:
        print("\n".join(p.tail(8000) for p in processes))
        raise
    finally:
        for process in processes:
            process.stop()


def _flow(client: GlaiClient, tmp: Path, storage: Path) -> None:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    first, second, third = (slice(0, 600), slice(600, 1200), slice(1200, 1797))
    ds_a = _upload(client, tmp, "a", x[first], y[first])
    ds_b = _upload(client, tmp, "b", x[second], y[second])
    ds_c = _upload(client, tmp, "c", x[third], y[third])

    parent = _done(client, client.submit_job(ds_a, SMALL))
    assert (storage / f"jobs/{parent['id']}/statistics.safetensors").is_file()
    assert "statistics.safetensors" not in {a["name"] for a in parent["artifacts"]}

    child = _done(client, client.submit_job(ds_b, {"parent_job_id": parent["id"],
                                                   "incremental": {"phase2": "statistics"}}))
    assert _phases(child)[:1] == ["quantitative"] and "structural" not in _phases(child)  # no phase 1
    info = child["summary"]["incremental"]
    assert info["mode"] == "statistics" and info["statistics_rows"] == info["train_rows"]
    assert child["lineage"] == {**child["lineage"], "kind": "incremental", "parent_job_id": parent["id"],
                                "structure_job_id": parent["id"], "datasets": [ds_a, ds_b]}
    assert child["lineage"]["rows_added"] == 600
    assert [c["id"] for c in client.children(parent["id"])] == [child["id"]]
    assert child["summary"]["glai_accuracy"] >= child["summary"]["warm_start_accuracy"]

    # The parent's dataset with rows appended: only the rows after its own are new, checked byte for byte.
    both = np.r_[np.arange(600), np.arange(600, 1200)]
    ds_ab = _upload(client, tmp, "ab", x[both], y[both])
    appended = _done(client, client.submit_job(ds_ab, {"parent_job_id": parent["id"],
                                                       "incremental": {"data": "appended"}}))
    assert appended["lineage"]["rows_added"] == 600 and appended["lineage"]["datasets"] == [ds_a, ds_ab]
    other = np.r_[np.arange(600, 1200), np.arange(1200, 1797)]
    ds_fake = _upload(client, tmp, "fake", x[other], y[other])
    fake = client.wait(client.submit_job(ds_fake, {"parent_job_id": parent["id"],
                                                   "incremental": {"data": "appended"}})["id"], timeout=240)
    assert (fake["state"], fake["failure_kind"]) == ("failed", "user_error"), fake.get("failure_message")
    assert "with rows appended" in fake["failure_message"]

    copy = _done(client, client.submit_job(ds_c, {"parent_job_id": parent["id"],
                                                  "incremental": {"rows": "own"}}))
    assert copy["lineage"]["datasets"] == [ds_c]
    merged = _done(client, client.merge_models([parent["id"], copy["id"]]))
    merge = merged["summary"]["merge"]
    assert merge["method"] == "summed_statistics" and merge["jobs"] == [parent["id"], copy["id"]]
    assert [p["dataset_id"] for p in merge["parts"]] == [ds_a, ds_c]
    for part in merge["parts"]:
        assert 0.5 < part["merged_val_accuracy"] <= 1.0
    assert merged["lineage"]["sources"] == [parent["id"], copy["id"]]

    from glai_core.predict import Predictor

    model = Predictor.load(client.download_artifact(merged["id"], "trained", tmp / "merged.safetensors"))
    hits = np.mean([str(p) == str(t) for p, t in zip(model.predict(x[second]), y[second], strict=True)])
    assert hits > 0.8, hits  # rows neither copy saw

    sweep = _done(client, client.submit_job(ds_a, {**SMALL, "baseline": {"enabled": True, "max_epochs": 8},
                                                   "sweep": {"lr": [1e-3, 3e-3], "seed": [0, 1],
                                                             "halving": {"eta": 2, "first_rung": 2}}}))
    report = sweep["summary"]["sweep"]
    kinds = [h["kind"] for h in report["heads"]]
    assert kinds.count("glai") == 4 and kinds.count("mlp") == 4
    assert report["halving"]["rungs"][0]["epoch"] == 2  # the worker ran the job's halving
    assert any(h["pruned_at"] == 2 for h in report["heads"])
    for kind in ("glai", "mlp"):
        assert report["best"][kind] in report["front"][kind]
    assert {a["name"] for a in sweep["artifacts"]} >= {"trained", "baseline"}
    series = {s["key"] for s in client.curves(sweep["id"], keys=None)["series"]}
    for head in report["heads"]:
        assert f"h{head['id']}/val_accuracy" in series
