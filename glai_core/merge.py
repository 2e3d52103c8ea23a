"""Merging copies of one structure fitted on different data into the model of all their data.

The block is linear in Θ once S is fixed, so when every copy kept its sufficient statistics the merged
model is the closed form on the summed statistics (``summed_statistics``): exactly the ridge fit on the
union of their training rows, up to float rounding, without reading one training row. When a copy has no
statistics (its path features were too many to keep them) the merge says so and does something else
(``refit``): phase 2 with the job's solver on the union of every part's training rows, started from the
row-weighted mean of the copies' Θ. Either way the result is scored on each part's validation rows, next to
the copy that was fitted on that part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from glai_core import statistics as stats_lib
from glai_core.checkpoint import phase_path
from glai_core.compute import resolve_precision
from glai_core.config import TrainConfig
from glai_core.defaults import quantitative_settings
from glai_core.hooks import Hooks
from glai_core.incremental import PHASE, grow_classes
from glai_core.metrics import evaluate
from glai_core.model import GLAIBlock, glai_trainable_count, mlp_param_count
from glai_core.parts import PlacedPart, concat
from glai_core.preprocess import Standardizer
from glai_core.solvers import quantitative_phase
from glai_core.train import emit, evaluate_point


class MergeError(ValueError):
    """Copies that cannot be merged (different structures, overlapping rows)."""


@dataclass
class Source:
    """One copy: its block, classes, statistics (or None) and the parts it was fitted on."""

    job_id: str
    block: GLAIBlock
    class_names: list[str]
    statistics: stats_lib.Statistics | None
    parts: list[PlacedPart]


@dataclass
class MergeResult:
    glai: GLAIBlock
    standardizer: Standardizer
    class_names: list[str]
    statistics: stats_lib.Statistics | None
    summary: dict[str, Any]
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def merged_classes(sources: list[Source]) -> list[str]:
    return list(dict.fromkeys(c for s in sources for c in s.class_names))


def check_sources(sources: list[Source]) -> str:
    """The shared structure's digest; raises ``MergeError`` for another structure or rows counted twice."""
    if len(sources) < 2:
        raise MergeError("a merge needs at least two jobs")
    digests = {s.job_id: stats_lib.structure_digest(s.block.structure) for s in sources}
    if len(set(digests.values())) != 1:
        raise MergeError("the jobs do not share one structure (their frozen S differ): only copies of one "
                         "structure can be merged")
    seen: dict[tuple, str] = {}
    for source in sources:
        for placed in source.parts:
            key = tuple(sorted(placed.part.to_dict().items()))
            if key in seen:
                raise MergeError(f"jobs {seen[key]} and {source.job_id} were both fitted on dataset "
                                 f"{placed.part.dataset_id}'s rows: merging would count them twice")
            seen[key] = source.job_id
    return next(iter(digests.values()))


def mean_theta(sources: list[Source], classes: list[str]) -> GLAIBlock:
    """Row-weighted mean of the copies' (Θ, c), each grown to ``classes`` (a class a copy never saw gets
    weight only from the copies that did)."""
    grown = [_aligned(s.block, s.class_names, classes) for s in sources]
    weights = [float(sum(p.train_rows for p in s.parts)) for s in sources]
    merged = grown[0]
    with torch.no_grad():
        theta = torch.zeros_like(merged.theta)
        bias = torch.zeros_like(merged.bias)
        mass = torch.zeros(len(classes), dtype=theta.dtype, device=theta.device)
        for block, source, weight in zip(grown, sources, weights, strict=True):
            seen = torch.tensor([c in source.class_names for c in classes], device=theta.device)
            w = weight * seen.to(theta.dtype)
            theta += w.view(-1, *([1] * (theta.dim() - 1))) * block.theta
            bias += w * block.bias
            mass += w
        mass = mass.clamp_min(1e-12)
        merged.theta.copy_(theta / mass.view(-1, *([1] * (theta.dim() - 1))))
        merged.bias.copy_(bias / mass)
    return merged


def _aligned(block: GLAIBlock, names: list[str], classes: list[str]) -> GLAIBlock:
    """The block with outputs in ``classes`` order (zeros for classes it lacks)."""
    grown = grow_classes(block, len(classes))  # the block's own classes first, in its order
    order = [names.index(c) if c in names else None for c in classes]
    if order[:len(names)] == list(range(len(names))):
        return grown
    head = grown.structure.layers[-1]
    with torch.no_grad():
        for tensor in (grown.theta, grown.bias, head.weight, head.bias):
            source = tensor.clone()
            tensor.zero_()
            for target, index in enumerate(order):
                if index is not None:
                    tensor[target] = source[index]
    return grown


def merge(sources: list[Source], standardizer: Standardizer, config: TrainConfig, hooks: Hooks,
          method: str = "auto") -> MergeResult:
    """The model of all the sources' data (see the module doc). ``method``: ``auto`` (summed statistics
    when every source has them, else ``refit``), ``summed_statistics`` or ``refit``."""
    started = time.monotonic()
    check_sources(sources)
    classes = merged_classes(sources)
    parts = [p for s in sources for p in s.parts]
    val = concat([p.val for p in parts])
    have_stats = all(s.statistics is not None for s in sources)
    if method == "auto":
        method = "summed_statistics" if have_stats else "refit"
    if method == "summed_statistics" and not have_stats:
        lacking = [s.job_id for s in sources if s.statistics is None]
        raise MergeError(f"jobs {lacking} kept no sufficient statistics: merge them by 'refit'")
    start = mean_theta(sources, classes)
    warm = evaluate(start, val.x, val.y)[1]
    total: stats_lib.Statistics | None = None
    extra: dict[str, Any] = {}
    if method == "summed_statistics":
        hooks.on_phase_start(PHASE)
        total = stats_lib.combine([s.statistics for s in sources if s.statistics is not None], classes)
        cfg = quantitative_settings(config.quantitative, total.rows)
        block = GLAIBlock.from_structure(start.structure, warm_start=cfg.warm_start)
        solution = stats_lib.solve(block, total, val, cfg.ridge_lambdas, cfg.warm_start)
        metrics = evaluate_point(block, None, val.with_gates(block.structure))
        metrics.pop("train_loss", None)
        seconds = time.monotonic() - started
        history = [{"step": 1.0, "seconds": seconds, **metrics, "ridge_lambda": solution.relative_lambda}]
        emit(hooks, PHASE, 1, 1, history[0], seconds)
        hooks.on_phase_end(PHASE, {"best_accuracy": metrics["val_accuracy"], "steps": 1.0,
                                   "seconds": seconds})
        extra = {"ridge_lambda": solution.relative_lambda, "temperature": solution.temperature,
                 "statistics_rows": total.rows}
        accuracy, solver = metrics["val_accuracy"], "statistics"
    elif method == "refit":
        missing = [p.part.dataset_id for p in parts if p.train is None]
        if missing:
            raise MergeError(f"refit needs the training rows of every part (missing: {missing})")
        train = concat([p.train for p in parts if p.train is not None])
        quant = quantitative_phase(start, train, val, config.quantitative, hooks,
                                   phase_path(hooks.checkpoint_dir, PHASE), config.seed,
                                   resolve_precision(config.precision, start.theta.device))
        block = quant.model  # type: ignore[assignment]
        history, accuracy, solver = quant.history, quant.best_accuracy, str(quant.extra.get("solver"))
        if not quant.skipped:
            hooks.on_phase_end(PHASE, {"best_accuracy": quant.best_accuracy, "steps": float(len(history)),
                                       "seconds": quant.seconds})
    else:
        raise MergeError(f"unknown merge method {method!r}: auto, summed_statistics or refit")
    block.eval()
    per_part = []
    for source in sources:
        own = _aligned(source.block, source.class_names, classes)
        for placed in source.parts:
            per_part.append({"job_id": source.job_id, "dataset_id": placed.part.dataset_id,
                             "val_rows": len(placed.val),
                             "merged_val_accuracy": evaluate(block, placed.val.x, placed.val.y)[1],
                             "source_val_accuracy": evaluate(own, placed.val.x, placed.val.y)[1]})
    d, hidden, m = block.in_features, block.hidden, block.out_features
    summary = {
        "glai_accuracy": accuracy, "warm_start_accuracy": warm, "glai_seconds": time.monotonic() - started,
        "phase2_solver": solver, "glai_hidden": hidden,
        "glai_trainable_params": glai_trainable_count(d, hidden, m),
        "structure_params": mlp_param_count(d, hidden, m), "structural_epochs": 0,
        "merge": {"method": method, "jobs": [s.job_id for s in sources], "classes": classes,
                  "train_rows": sum(p.train_rows for p in parts), "parts": per_part,
                  "what": ("the closed form on the summed statistics: the ridge fit of the union of the "
                           "jobs' training rows" if method == "summed_statistics" else
                           "phase 2 on the union of the jobs' training rows, started from their "
                           "row-weighted mean Θ (some job kept no statistics)"), **extra},
    }
    return MergeResult(block, standardizer, classes, total, summary, {PHASE: history})


__all__ = ["MergeError", "MergeResult", "Source", "check_sources", "mean_theta", "merge", "merged_classes"]
