"""The user's whole journey, shared by every backend: upload, submit (twice, idempotently), wait,
curves, logs, download, predict; then cancel a running job."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits

from glai_client.client import GlaiClient, GlaiError

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
    onnx_copy_and_config(client, job["id"], predictor, x, y, tmp)
    server_predictions(client, job["id"], predictor, x)

    from typer.testing import CliRunner

    from glai_client.cli import app

    samples = tmp / "new.npz"
    np.savez(samples, X=x[:20])
    result = CliRunner().invoke(app, ["predict", str(model), str(samples)])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(label) for label in labels[:20]]


def onnx_copy_and_config(client: GlaiClient, job_id: str, predictor: Any, x: np.ndarray, y: np.ndarray,
                         tmp: Path) -> None:
    """The ONNX copy, run with onnxruntime, gives the model's probabilities (within 1e-4) on the rows the
    job held out; config.json holds the settings it ran with."""
    import onnxruntime

    from glai_core.config import TrainConfig
    from glai_core.data import split_indices
    from glai_core.defaults import unresolved

    artifacts = {a["name"]: a for a in client.artifacts(job_id)}
    assert artifacts["trained.onnx"]["format"] == "onnx" and artifacts["config.json"]["format"] == "json"
    assert artifacts["trained.onnx"]["meta"]["check"]["passed"] is True
    models = f"{tmp / 'models'}/"  # a directory: the file takes the name the API gives it
    onnx_file = client.download_artifact(job_id, "trained.onnx", models)
    assert onnx_file.name == f"{job_id}-trained.onnx"
    _, held_out = split_indices(y, 10, 0.2, TINY["seed"])  # the job's validation_fraction and seed
    rows = x[held_out]
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"features": rows})
    assert float(np.abs(probabilities - predictor.predict_proba(rows)).max()) <= 1e-4

    settings = json.loads(client.download_artifact(job_id, "config.json", models).read_text())
    assert unresolved(TrainConfig.from_dict(settings["config"])) == []
    assert settings["config"]["structural"]["max_epochs"] == TINY["structural"]["max_epochs"]
    assert settings["requested"]["config"]["structural"]["lr"] is None  # "auto" as asked, chosen in config
    assert settings["config"]["structural"]["lr"] > 0


def server_predictions(client: GlaiClient, job_id: str, predictor: Any, x: np.ndarray) -> None:
    """POST /v1/jobs/{id}/predict answers what the downloaded model answers; a wrong input names its field."""
    answer = client.predict_remote(job_id, rows=x[:50])
    assert answer["classes"] == predictor.predict(x[:50])
    assert np.abs(np.asarray(answer["probabilities"]) - predictor.predict_proba(x[:50])).max() < 1e-5
    assert client.predict_remote(job_id, rows=x[:5], artifact="baseline")["artifact"] == "baseline"
    try:
        client.predict_remote(job_id, texts=["a digit"])
    except GlaiError as error:
        assert (error.status, error.field) == (422, "texts"), error
    else:
        raise AssertionError("texts for a feature model were accepted")


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
