"""The user's whole journey, shared by every backend: upload, submit (twice, idempotently), wait,
curves, logs, download, predict; then cancel a running job."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from glai_client.client import GlaiClient

TINY = {"architecture": {"hidden": [16]},
        "structural": {"max_epochs": 2, "min_epochs": 1, "batch_size": 256},
        "quantitative": {"epochs": 1, "batch_size": 256},
        "pruning": {"sparsities": [0.5], "finetune_epochs": 0},
        "baseline": {"max_epochs": 2, "batch_size": 256}, "seed": 1}
# Long enough to be caught running: many small-batch epochs that never stop early.
LONG = {"architecture": {"hidden": [16]},
        "structural": {"max_epochs": 1000, "min_epochs": 1000, "batch_size": 16},
        "pruning": {"enabled": False}, "baseline": {"enabled": False}}


def digits_file(directory: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    path = directory / "digits.npz"
    np.savez(path, X=x.astype(np.float32), y=y.astype(np.int64))
    return path, x.astype(np.float32), y


def train_and_predict(client: GlaiClient, tmp: Path) -> None:
    from glai_core.predict import Predictor

    path, x, y = digits_file(tmp)
    ds = client.upload_dataset(path, name="digits")
    assert (ds["n_samples"], ds["n_features"], ds["n_classes"]) == (1797, 64, 10)
    job = client.submit_job(ds["id"], TINY, idempotency_key="e2e-tiny")
    assert job["state"] == "queued"
    assert client.submit_job(ds["id"], TINY, idempotency_key="e2e-tiny")["id"] == job["id"]
    done = client.wait(job["id"], timeout=150, poll_s=0.5)
    assert done["state"] == "succeeded", (done.get("failure_kind"), done.get("failure_message"))
    phases = [t["to_value"] for t in done["transitions"] if t["field"] == "phase"]
    assert phases[:2] == ["structural", "quantitative"]
    assert {a["name"] for a in done["artifacts"]} >= {"trained", "baseline"}

    curves = client.curves(job["id"], max_points=10)
    keys = {(s["key"], s["phase"]) for s in curves["series"]}
    assert any(phase == "structural" for _, phase in keys)
    assert all(len(s["points"]) <= 10 for s in curves["series"])
    log = client.logs(job["id"])
    assert log["text"] and log["next_offset"] > 0

    model = client.download_artifact(job["id"], "trained", tmp / "trained.safetensors")
    predictor = Predictor.load(model)
    labels = predictor.predict(x[:200])
    hits = [str(label) == str(truth) for label, truth in zip(labels, y[:200], strict=True)]
    accuracy = float(np.mean(hits))
    assert accuracy > 0.5, accuracy

    from typer.testing import CliRunner

    from glai_client.cli import app

    samples = tmp / "new.npz"
    np.savez(samples, X=x[:20])
    result = CliRunner().invoke(app, ["predict", str(model), str(samples)])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(label) for label in labels[:20]]


def cancel_running(client: GlaiClient, tmp: Path) -> None:
    ds = client.builtin_dataset("digits")
    job = client.submit_job(ds["id"], LONG)
    deadline = time.monotonic() + 60
    while client.get_job(job["id"])["state"] != "running":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.3)
    assert client.cancel(job["id"])["state"] in {"cancelling", "cancelled"}
    final = client.wait(job["id"], timeout=60, poll_s=0.5)
    assert final["state"] == "cancelled", final
