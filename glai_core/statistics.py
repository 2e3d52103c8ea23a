"""Sufficient statistics of the closed-form phase 2: G = [F 1]^T [F 1] and B = [F 1]^T Y over training rows.

With S frozen the ridge problem sees the training rows only through these two sums (F's rows are the path
features of ``solvers.path_features``; they depend on the gates, and the gates on S alone). So:

* a child job adds the sums of its *new* rows to its parent's, and only the new rows are featurised;
* copies fitted on different data under one structure merge by adding their sums;
* the solve from summed statistics is the solve on the union, up to float rounding (float64 sums).

G does not depend on the classes, and a class no row has adds a zero column to B: a superset of classes
extends B with zero columns (``align_classes``). Stored as safetensors (float64 tensors, JSON metadata under
the header key ``glai_statistics``), never pickle. ``structure_digest`` names the structure the sums belong
to, so sums of different structures are never added.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from glai_core.metrics import evaluate_sums
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.solvers import (
    RidgeSolution,
    cholesky_solve,
    feature_dim,
    fit_temperature,
    normal_equations,
    val_logits,
    warm_prior,
)
from glai_core.train import EVAL_BATCH, DeviceSet

METADATA_KEY = "glai_statistics"
FORMAT_VERSION = 1


class StatisticsError(ValueError):
    """Statistics that cannot be used together (another structure, other widths) or a damaged file."""


def structure_digest(structure: StructuralMLP) -> str:
    """SHA-256 over S's hidden layers (shapes and float32 bytes). The output layer is left out: it plays
    no part in the gates, and a superset of classes changes it."""
    digest = hashlib.sha256()
    for layer in structure.layers[:-1]:
        for tensor in (layer.weight, layer.bias):
            value = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(repr(tuple(value.shape)).encode())
            digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def statistics_bytes(dim: int, m: int) -> int:
    """Bytes of one stored set: the (D+1)^2 Gram and the (D+1) x m right-hand side, float64."""
    return 8 * (dim + 1) * (dim + 1 + m)


@dataclass
class Statistics:
    """Sums over ``rows`` training rows of one structure; ``parts`` says which rows (lineage parts)."""

    gram: Tensor  # (D+1, D+1) float64
    rhs: Tensor  # (D+1, m) float64, columns in ``class_names`` order
    rows: int
    class_names: list[str]
    structure: str  # structure_digest of the S they were computed under
    parts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return self.gram.shape[0] - 1


def compute(block: GLAIBlock, train: DeviceSet, class_names: list[str],
            parts: list[dict[str, Any]] | None = None) -> Statistics:
    """One pass over ``train`` (gates cached or computed here): N (D+1)^2 multiply-adds in float64."""
    data = train if train.gates is not None else train.with_gates(block.structure)
    gram, rhs = normal_equations(block, data)
    return Statistics(gram, rhs, len(data), [str(c) for c in class_names], structure_digest(block.structure),
                      list(parts or []))


def accumulate(block: GLAIBlock, blocks: Iterable[DeviceSet], class_names: list[str],
               parts: list[dict[str, Any]] | None = None) -> Statistics:
    """``compute`` over row blocks (e.g. ``parts.train_blocks``): the same sums, one block in memory."""
    total: Statistics | None = None
    for rows in blocks:
        sums = compute(block, rows, class_names)
        if total is None:
            total = sums
        else:
            total.gram += sums.gram
            total.rhs += sums.rhs
            total.rows += sums.rows
    if total is None:
        raise StatisticsError("no training rows")
    total.parts = list(parts or [])
    return total


def align_classes(stats: Statistics, class_names: list[str]) -> Statistics:
    """The same sums with B's columns in ``class_names`` order; classes the rows never had get zeros.

    Every class of ``stats`` must be in ``class_names`` (dropping one would silently drop its rows' targets).
    """
    names = [str(c) for c in class_names]
    missing = [c for c in stats.class_names if c not in names]
    if missing:
        raise StatisticsError(f"classes {missing[:5]} of the statistics are not among the model's classes")
    rhs = stats.rhs.new_zeros(stats.rhs.shape[0], len(names))
    for column, name in enumerate(stats.class_names):
        rhs[:, names.index(name)] = stats.rhs[:, column]
    return Statistics(stats.gram, rhs, stats.rows, names, stats.structure, list(stats.parts))


def combine(items: list[Statistics], class_names: list[str] | None = None) -> Statistics:
    """The sums of several sets under one structure (classes aligned to ``class_names``: by default every
    class in order of first appearance). Parts must not repeat: the same rows would count twice."""
    if not items:
        raise StatisticsError("nothing to combine")
    first = items[0]
    for other in items[1:]:
        if other.structure != first.structure:
            raise StatisticsError("statistics of different structures cannot be added")
        if other.gram.shape != first.gram.shape:
            raise StatisticsError(f"statistics of {other.dim} and {first.dim} path features cannot be added")
    if class_names is None:
        class_names = list(dict.fromkeys(name for s in items for name in s.class_names))
    seen: set[str] = set()
    parts: list[dict[str, Any]] = []
    for stats in items:
        for part in stats.parts:
            key = json.dumps(part, sort_keys=True)
            if key in seen:
                raise StatisticsError(f"part {part} appears twice: its rows would be counted twice")
            seen.add(key)
            parts.append(part)
    aligned = [align_classes(s, class_names) for s in items]
    gram = aligned[0].gram.clone()
    rhs = aligned[0].rhs.clone()
    for stats in aligned[1:]:
        gram += stats.gram.to(gram.device)
        rhs += stats.rhs.to(rhs.device)
    return Statistics(gram, rhs, sum(s.rows for s in items), [str(c) for c in class_names], first.structure,
                      parts)


# ------------------------------------------------------------------------------------------ solve

def _load_flat(block: GLAIBlock, flat: Tensor, scale: float = 1.0) -> None:
    with torch.no_grad():
        block.theta.copy_((flat[:-1].T * scale).reshape(block.theta.shape).to(block.theta.dtype))
        block.bias.copy_((flat[-1] * scale).to(block.bias.dtype))


def solve(block: GLAIBlock, stats: Statistics, val: DeviceSet, relative_lambdas: list[float],
          warm_start: bool = True) -> RidgeSolution:
    """The primal ridge closed form from ``stats``, as ``solvers.ridge_fit`` computes it from the rows:
    shrunk towards the rescaled warm start of ``block`` (its weights on entry: the structure's own path
    weights for an exact union fit), lambda = relative x mean diag(G) from the grid, a temperature fitted
    on validation, the best (accuracy, then loss) on ``val`` left in ``block``."""
    if stats.dim != feature_dim(block) or stats.rhs.shape[1] != block.out_features:
        raise StatisticsError(f"statistics of {stats.dim} features x {stats.rhs.shape[1]} classes do not fit "
                              "a "
                              f"block of {feature_dim(block)} x {block.out_features}")
    device = block.theta.device
    gram, rhs = stats.gram.to(device), stats.rhs.to(device)
    val = val if val.gates is not None else val.with_gates(block.structure)
    prior = warm_prior(block, gram, rhs, None) if warm_start else None  # type: ignore[arg-type]
    scale = float(gram.diagonal()[:-1].mean())
    best: RidgeSolution | None = None
    for relative in relative_lambdas:
        flat = cholesky_solve(gram, rhs, relative * scale, prior)
        _load_flat(block, flat)
        temperature = fit_temperature(val_logits(block, val), val.y)
        _load_flat(block, flat, temperature)
        loss, correct, n = evaluate_sums(block, val.x, val.y, EVAL_BATCH, val.gates).tolist()
        candidate = RidgeSolution(theta=block.theta.detach().clone(), bias=block.bias.detach().clone(),
                                  lam=relative * scale, relative_lambda=relative, temperature=temperature,
                                  val_accuracy=correct / n, val_loss=loss / n, method="statistics")
        if best is None or (candidate.val_accuracy, -candidate.val_loss) > (best.val_accuracy,
                                                                            -best.val_loss):
            best = candidate
    if best is None:
        raise StatisticsError("no ridge strength to try")
    with torch.no_grad():
        block.theta.copy_(best.theta)
        block.bias.copy_(best.bias)
    return best


# ------------------------------------------------------------------------------------------ files

def save(path: str | os.PathLike[str], stats: Statistics) -> Path:
    """Write atomically: tensors ``gram`` and ``rhs`` (float64) + JSON metadata. Never pickle."""
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, "rows": int(stats.rows), "class_names": stats.class_names,
            "structure": stats.structure, "parts": stats.parts, "dim": stats.dim}
    tensors = {"gram": stats.gram.detach().to("cpu", torch.float64).contiguous(),
               "rhs": stats.rhs.detach().to("cpu", torch.float64).contiguous()}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, allow_nan=False)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's metadata (rows, classes, structure, parts) without reading a tensor."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError) as exc:
        raise StatisticsError(f"not a statistics file: {exc}") from exc
    if raw is None:
        raise StatisticsError("a safetensors file without GLAI statistics metadata")
    meta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise StatisticsError(f"unknown statistics format {meta.get('format_version')!r}")
    return meta


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Statistics:
    """Read and check a file written by ``save`` (shapes and dtypes against its metadata)."""
    meta = read_metadata(path)
    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        if set(handle.keys()) != {"gram", "rhs"}:
            raise StatisticsError("a statistics file holds exactly 'gram' and 'rhs'")
        gram, rhs = handle.get_tensor("gram"), handle.get_tensor("rhs")
    dim, m = int(meta["dim"]), len(meta["class_names"])
    if gram.dtype != torch.float64 or rhs.dtype != torch.float64 or tuple(gram.shape) != (dim + 1, dim + 1) \
            or tuple(rhs.shape) != (dim + 1, m):
        raise StatisticsError("the statistics tensors do not match their metadata")
    return Statistics(gram, rhs, int(meta["rows"]), [str(c) for c in meta["class_names"]],
                      str(meta["structure"]),
                      list(meta.get("parts") or []))


__all__ = ["FORMAT_VERSION", "Statistics", "StatisticsError", "accumulate", "align_classes", "combine",
           "compute", "load",
           "read_metadata", "save", "solve", "statistics_bytes", "structure_digest"]
