"""Turn a stored dataset into training arrays, embedding raw text or images once per backbone.

Feature data sets are canonical arrays under ``datasets/<id>/`` and are memory-mapped (from this machine's
staging cache when storage is an object store: ``worker.staging``). Text and image
data sets keep the raw upload (``datasets/<id>/raw.<ext>``); the first job with a backbone embeds them
in the ``embedding`` phase and caches the features under ``features/<dataset_id>/<backbone>/`` with a
``feature_cache`` row, so later jobs (and a resumed attempt) skip the backbone entirely.

Both sides agree on the layout: the API stores the validated upload as ``raw.<file_format>`` and fills the
row's ``kind``, ``file_format``, ``text_column`` and ``label_column``; class names come from the same
``glai_core.raw_data`` loader on both sides (sorted labels, or sorted class folders), so the row's
``class_names`` and the cached features' agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from glai_common.jobs import dialect_insert
from glai_common.models import FeatureCache
from glai_core.data import DataError, LoadedData, load_canonical
from glai_core.hooks import Event
from worker.context import WorkerContext
from worker.hooks import DatabaseHooks

EMBEDDING = "embedding"


@dataclass(frozen=True)
class DatasetInfo:
    """The dataset row's fields the worker needs, detached from any session."""

    id: str
    kind: str
    file_format: str
    text_column: str | None
    label_column: str | None
    storage_key: str


@dataclass
class TrainingData:
    data: LoadedData
    preprocessing: dict[str, Any]  # backbone description for the exported model ({} for features)


def load_training_data(ctx: WorkerContext, dataset: DatasetInfo, backbone: str | None,
                       hooks: DatabaseHooks, device: str) -> TrainingData:
    if dataset.kind == "features":
        if backbone:
            raise DataError(f"dataset {dataset.id} already holds features; a backbone applies only to "
                            "text or image datasets", "backbone")
        with ctx.staging.staged(dataset.storage_key) as directory:  # memory-mapped once opened
            return TrainingData(load_canonical(directory), {})
    if not backbone:
        raise DataError(f"a {dataset.kind} dataset needs a backbone to turn it into features", "backbone")
    from glai_core import backbones

    description = backbones.describe(backbone)
    expected = "text" if dataset.kind == "text" else "image"
    if description["modality"] != expected:
        raise DataError(f"backbone {backbone!r} reads {description['modality']}, but the dataset holds "
                        f"{dataset.kind}", "backbone")
    cached = _cached(ctx, dataset.id, backbone)
    if cached is None:
        cached = _embed(ctx, dataset, backbone, hooks, device)
    else:
        hooks.reporter.log(f"[embedding] reusing cached {backbone} features")
    with ctx.staging.staged(cached) as directory:
        features = backbones.load_cached_features(directory, mmap=True)
    data = LoadedData(x=features.features, y=features.labels, class_names=features.class_names)
    return TrainingData(data, description)


def _cached(ctx: WorkerContext, dataset_id: str, backbone: str) -> str | None:
    """The storage key of complete cached features (``meta.json`` is stored last), or None."""
    with ctx.session() as session:
        key = session.scalar(select(FeatureCache.storage_key).where(FeatureCache.dataset_id == dataset_id,
                                                                    FeatureCache.backbone == backbone))
    if key is None:
        return None
    return key if ctx.storage.exists(f"{key}/meta.json") else None


def _raw_file(directory: Path, dataset: DatasetInfo) -> Path:
    candidates = sorted(directory.glob("raw.*"))
    if not candidates:
        raise DataError(f"the raw upload of dataset {dataset.id} is missing from storage", "file")
    return candidates[0]


def _batch_size(device: str, default: int) -> int:
    """Bigger batches on a GPU (the backbone is small; launch overhead dominates at 64)."""
    return 256 if device.startswith("cuda") else default


def _embed(ctx: WorkerContext, dataset: DatasetInfo, backbone: str, hooks: DatabaseHooks,
           device: str) -> str:
    """The ``embedding`` phase: one event per batch (step = batch, progress = fraction of samples).
    Returns the storage key of the cached features."""
    if not ctx.storage.list_prefix(dataset.storage_key):
        raise DataError(f"the raw upload of dataset {dataset.id} is missing from storage", "file")
    with ctx.staging.staged(dataset.storage_key) as directory:
        return _embed_staged(ctx, dataset, _raw_file(directory, dataset), backbone, hooks, device)


def _embed_staged(ctx: WorkerContext, dataset: DatasetInfo, path: Path, backbone: str, hooks: DatabaseHooks,
                  device: str) -> str:
    from glai_core import backbones, raw_data

    hooks.on_phase_start(EMBEDDING)
    started = time.monotonic()
    inputs: Any
    if dataset.kind == "text":
        if not dataset.text_column or not dataset.label_column:
            raise DataError("a text dataset needs its text and label columns", "text_column")
        raw = raw_data.load_text_table(path, dataset.file_format, dataset.text_column, dataset.label_column)
        inputs = raw.texts
    else:
        raw = raw_data.load_image_zip(path, verify=False)  # verified at upload
        inputs = raw.images
    total = max(1, len(raw))
    batch_size = _batch_size(device, backbones.spec(backbone).default_batch_size)
    n_batches = math.ceil(len(raw) / batch_size)
    steps = {"done": 0}

    def on_progress(done: int, _total: int) -> None:
        steps["done"] += 1
        elapsed = time.monotonic() - started
        hooks.on_event(Event(phase=EMBEDDING, step=steps["done"], total_steps=n_batches,
                             progress=done / total, wall_time=elapsed,
                             metrics={"embedded_samples": float(done),
                                      "samples_per_s": done / elapsed if elapsed > 0 else 0.0}))

    features = backbones.embed_raw(backbone, inputs, device=device, batch_size=batch_size,
                                   on_progress=on_progress, should_stop=hooks.should_stop)
    key = f"features/{dataset.id}/{backbone}"
    ctx.staging.publish(key, lambda target: backbones.cache_features(
        target, features, raw.labels, raw.class_names, backbones.describe(backbone)), last="meta.json")
    with ctx.session() as session:  # a concurrent job may have cached it too: first row wins, same files
        session.execute(dialect_insert(session)(FeatureCache.__table__).values(
            dataset_id=dataset.id, backbone=backbone, storage_key=key, n_features=int(features.shape[1]),
        ).on_conflict_do_nothing(index_elements=["dataset_id", "backbone"]))
    seconds = time.monotonic() - started
    hooks.on_phase_end(EMBEDDING, {"samples": float(len(raw)), "dim": float(features.shape[1]),
                                   "seconds": seconds})
    return key
