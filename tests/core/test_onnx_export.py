"""ONNX copies of trained, pruned and baseline models: onnxruntime gives PyTorch's predictions (within
1e-4 on the probabilities) on rows the models never trained on, for every kind of model the service
exports, whatever the batch size; and the check itself notices a copy that does not match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from glai_core.config import (
    ArchitectureConfig,
    BaselineConfig,
    PruningConfig,
    QuantitativeConfig,
    StructuralConfig,
    TrainConfig,
)
from glai_core.data import LoadedData, builtin, train_val_split
from glai_core.hooks import RecordingHooks
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.onnx_export import check_onnx, export_onnx, read_onnx_metadata, run_onnx
from glai_core.pipeline import PipelineResult, run_pipeline
from glai_core.predict import Predictor
from glai_core.preprocess import Standardizer

TOLERANCE = 1e-4


def _train(data: LoadedData, hidden: list[int], structured: bool) -> PipelineResult:
    config = TrainConfig(
        architecture=ArchitectureConfig(hidden=hidden),
        structural=StructuralConfig(max_epochs=8, min_epochs=2, batch_size=32),
        quantitative=QuantitativeConfig(solver="adam", epochs=2, batch_size=32),
        pruning=PruningConfig(sparsities=[0.5, 0.8], structured=structured, finetune_epochs=1),
        baseline=BaselineConfig(max_epochs=4, batch_size=32), seed=3, device="cpu", precision="fp32")
    return run_pipeline(data, config, RecordingHooks())


@pytest.fixture(scope="module")
def wine() -> LoadedData:
    """The wine table (13 features on very different scales: the standardisation matters), with its
    held-out rows kept apart."""
    return train_val_split(builtin("wine"), 0.25, 0)


@pytest.fixture(scope="module")
def trained(wine: LoadedData) -> dict[str, tuple[torch.nn.Module, Standardizer]]:
    """Every model a job exports, from real training: one and two hidden layers, structured and
    unstructured pruning (a masked Theta), and the MLP baseline."""
    models: dict[str, tuple[torch.nn.Module, Standardizer]] = {}
    for hidden, structured in (([32], True), ([16, 8], False)):
        result = _train(LoadedData(wine.x, wine.y, class_names=wine.class_names), hidden, structured)
        tag = f"{len(hidden)}-layer"
        models[f"trained-{tag}"] = (result.glai, result.standardizer)
        for pruned in result.pruned:
            models[f"pruned-{round(pruned.sparsity * 100)}-{tag}"] = (pruned.model, result.standardizer)
        assert result.baseline is not None
        models[f"baseline-{tag}"] = (result.baseline, result.standardizer)
    assert any(isinstance(m, GLAIBlock) and m.theta_mask is not None for m, _ in models.values())
    return models


NAMES = ["trained-1-layer", "pruned-50-1-layer", "pruned-80-1-layer", "baseline-1-layer",
         "trained-2-layer", "pruned-50-2-layer", "pruned-80-2-layer", "baseline-2-layer"]


@pytest.mark.parametrize("name", NAMES)
def test_onnx_predictions_match_pytorch_on_held_out_rows(name: str, trained: dict, wine: LoadedData,
                                                         tmp_path: Path) -> None:
    model, standardizer = trained[name]
    classes = list(wine.class_names)
    path = export_onnx(tmp_path / f"{name}.onnx", model, standardizer, {"name": name, "class_names": classes})
    held_out = np.asarray(wine.x_val, dtype=np.float32)
    predictor = Predictor(model, {"class_names": classes, "architecture": {"in_features": 13}}, standardizer)
    logits, probabilities = run_onnx(path, held_out)
    assert float(np.abs(probabilities - predictor.predict_proba(held_out)).max()) <= TOLERANCE
    assert [classes[k] for k in logits.argmax(axis=1)] == predictor.predict(held_out)
    check = check_onnx(path, model, standardizer, held_out)
    assert check.passed and check.rows == held_out.shape[0] == check.same_class_rows
    assert check.max_abs_diff_probabilities <= TOLERANCE
    for rows in (held_out[:1], np.repeat(held_out, 20, axis=0)):  # the batch axis is free
        assert run_onnx(path, rows)[1].shape == (rows.shape[0], len(classes))


def test_the_graph_computes_the_gates_from_the_frozen_structure(trained: dict, tmp_path: Path) -> None:
    """GLAIBlock.forward takes its gates from the structure: the graph holds the comparison z > 0 once per
    hidden layer, so the ONNX model needs nothing but the features."""
    model, standardizer = trained["trained-2-layer"]
    path = export_onnx(tmp_path / "m.onnx", model, standardizer)
    proto = onnx.load(str(path))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Greater") == 2, ops
    assert [i.name for i in proto.graph.input] == ["features"]
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]


def test_metadata_travels_in_the_file(tmp_path: Path) -> None:
    block = GLAIBlock.from_structure(StructuralMLP(4, [6], 3))
    path = export_onnx(tmp_path / "m.onnx", block, None, {"name": "trained", "class_names": ["a", "b", "c"],
                                                          "accuracy": float("nan")})
    metadata = read_onnx_metadata(path)
    assert metadata["class_names"] == ["a", "b", "c"] and metadata["accuracy"] is None
    assert metadata["architecture"]["kind"] == "glai" and metadata["standardize"] is False
    assert metadata["input"] == "features" and metadata["outputs"] == ["logits", "probabilities"]


def test_a_copy_that_does_not_match_fails_its_check(tmp_path: Path) -> None:
    torch.manual_seed(0)
    exported = GLAIBlock.from_structure(StructuralMLP(5, [8], 3))
    other = GLAIBlock.from_structure(StructuralMLP(5, [8], 3))
    path = export_onnx(tmp_path / "m.onnx", exported)
    rows = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    assert check_onnx(path, exported, None, rows).passed
    check = check_onnx(path, other, None, rows)
    assert not check.passed and check.max_abs_diff_probabilities > TOLERANCE


def test_the_callers_model_is_left_alone(tmp_path: Path) -> None:
    model = StructuralMLP(3, [4], 2).double().train()
    export_onnx(tmp_path / "m.onnx", model)
    assert next(model.parameters()).dtype == torch.float64 and model.training


def test_only_service_models_are_exported(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="only StructuralMLP and GLAIBlock"):
        export_onnx(tmp_path / "m.onnx", torch.nn.Linear(3, 2))
    assert not list(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's notice
def test_a_foreign_onnx_file_is_named_as_such(tmp_path: Path) -> None:
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(tmp_path / "plain.onnx"), dynamo=False)
    with pytest.raises(ValueError, match="not exported by glai"):
        read_onnx_metadata(tmp_path / "plain.onnx")
