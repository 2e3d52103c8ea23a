"""Checks of the exported files a finished job leaves, made independently of the worker's own check:
the ONNX copy is run with onnxruntime here and compared with the safetensors model through the same
``Predictor`` users load, on the held-out rows recomputed from the stored dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from glai_common.models import Artifact
from glai_core.config import TrainConfig
from glai_core.data import load_canonical, split_indices
from glai_core.defaults import adapt, unresolved
from glai_core.onnx_export import read_onnx_metadata
from glai_core.predict import Predictor

TOLERANCE = 1e-4


def check_onnx_copy(storage_dir: Path, model: Artifact, copy: Artifact, dataset_dir: Path,
                    validation_fraction: float, seed: int) -> None:
    data = load_canonical(dataset_dir)
    _, val_index = split_indices(data.y, len(data.class_names), validation_fraction, seed)
    rows = np.asarray(data.x[np.sort(val_index)], dtype=np.float32)
    predictor = Predictor.load(storage_dir / model.storage_key)
    expected = predictor.predict_proba(rows)
    session = onnxruntime.InferenceSession(str(storage_dir / copy.storage_key),
                                           providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"features": rows})
    assert probabilities.shape == expected.shape == (rows.shape[0], len(predictor.class_names))
    assert float(np.abs(probabilities - expected).max()) <= TOLERANCE, copy.name
    assert [predictor.class_names[k] for k in logits.argmax(axis=1)] == predictor.predict(rows), copy.name
    metadata = read_onnx_metadata(storage_dir / copy.storage_key)
    assert metadata["class_names"] == predictor.class_names and metadata["name"] == model.name
    assert metadata["architecture"] == predictor.metadata["architecture"]
    check = copy.meta["check"]  # the worker's own record of its check: the same rows, the same verdict
    assert check["passed"] is True and check["rows"] == rows.shape[0], check
    assert check["max_abs_diff_probabilities"] <= TOLERANCE, check
    assert copy.meta["format"] == "onnx" and copy.meta["model"] == model.name


def check_config_file(path: Path, summary: dict[str, Any], requested: dict[str, Any]) -> None:
    """config.json holds every setting the job ran with: nothing left to choose, the values the summary
    reports, the explicit requests kept, and choosing again from the same data changes nothing."""
    document = json.loads(path.read_text())
    assert document["format"] == "glai-job-config" and document["format_version"] == 1
    config = TrainConfig.from_dict(document["config"])
    assert unresolved(config) == []
    effective = summary["effective_settings"]
    for section in ("structural", "quantitative", "baseline"):
        assert document["config"][section] == effective[section], section
        for field, value in requested.get(section, {}).items():
            assert document["config"][section][field] == value, (section, field)
    assert document["config"]["architecture"]["reduction_factor"] == summary["reduction_factor"]
    assert document["architecture"]["glai_hidden"] == summary["glai_hidden"]
    data = effective["data"]
    again, _ = adapt(config, data["n_train"], data["d"], data["m"])
    assert again.to_dict() == config.to_dict()
    assert document["requested"]["config"] == requested
    assert len(document["data"]["class_names"]) == data["m"]
    assert document["chosen"] == effective["chosen"]
