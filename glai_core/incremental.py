"""Incremental retraining: new rows update the path weights of a parent's frozen structure, no phase 1.

The parent's S (and its standardiser) is reused as it is: its gates decide the paths. Two ways to refit Θ:

* ``statistics``: the closed form from sufficient statistics (``glai_core.statistics``). The parent's sums
  plus the sums of the new training rows give the ridge problem of the union, so only the new rows are
  featurised; the older parts contribute their validation rows (to pick lambda and the temperature).
* ``refit``: phase 2 (``solvers.quantitative_phase``, the job's solver) on the union of every part's training
  rows, warm-started from the parent's Θ.

``auto`` (``plan``) takes whichever the cost model says is cheaper. One is the closed form from the
summed statistics, which reads the new rows only. The other is the job's phase 2 on the union (L-BFGS or
Adam on cross-entropy, which needs every row), from the parent's weights. Either way the phase starts
from the parent's Θ (step 0) and keeps the best point on the union's validation rows, so it never ends
below the parent. A superset of classes gets new output rows:
zero in S's head and in Θ (``grow_classes``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from glai_core import statistics as stats_lib
from glai_core.checkpoint import phase_path
from glai_core.compute import precision_label, resolve_precision
from glai_core.config import QuantitativeConfig, TrainConfig
from glai_core.cost_model import (
    DEVICE_SPEEDS,
    choose_child_solver,
    choose_ridge_method,
    phase2_seconds,
    ridge_costs,
)
from glai_core.defaults import child_settings, quantitative_settings, section_values
from glai_core.hooks import Hooks
from glai_core.metrics import evaluate
from glai_core.model import GLAIBlock, StructuralMLP, glai_trainable_count, mlp_param_count, theta_shape
from glai_core.parts import PlacedPart, concat
from glai_core.preprocess import Standardizer
from glai_core.solvers import quantitative_phase
from glai_core.train import Best, DeviceSet, emit, evaluate_point

PHASE = "quantitative"
MODES = ("auto", "statistics", "refit")


@dataclass
class Parent:
    """What a child reuses: the parent's trained block (S + Θ), its standardiser, classes and sums."""

    block: GLAIBlock
    standardizer: Standardizer
    class_names: list[str]
    statistics: stats_lib.Statistics | None = None


@dataclass
class IncrementalResult:
    glai: GLAIBlock
    standardizer: Standardizer
    class_names: list[str]
    statistics: stats_lib.Statistics | None  # this job's sums (statistics mode), else None
    summary: dict[str, Any]
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def grow_structure(structure: StructuralMLP, m: int) -> StructuralMLP:
    """A copy of S with ``m`` outputs: the hidden layers as they are, zero head rows for new classes."""
    if m < structure.out_features:
        raise ValueError(f"cannot shrink {structure.out_features} outputs to {m}")
    reference = next(structure.parameters())
    grown = StructuralMLP(structure.in_features, structure.hidden, m).to(reference.device, reference.dtype)
    with torch.no_grad():
        for target, source in zip(grown.layers[:-1], structure.layers[:-1], strict=True):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
        head, old = grown.layers[-1], structure.layers[-1]
        head.weight.zero_()
        head.bias.zero_()
        head.weight[:old.out_features] = old.weight
        head.bias[:old.out_features] = old.bias
    return grown


def grow_classes(block: GLAIBlock, m: int) -> GLAIBlock:
    """The block with ``m`` outputs: its Θ and c for the old classes, zeros for the new ones."""
    if m == block.out_features:
        return copy.deepcopy(block)
    grown = GLAIBlock(grow_structure(block.structure, m)).to(block.theta.device, block.theta.dtype)
    with torch.no_grad():
        grown.theta.zero_()
        grown.bias.zero_()
        grown.theta[:block.out_features] = block.effective_theta()
        grown.bias[:block.out_features] = block.bias
    return grown


@dataclass(frozen=True)
class Plan:
    """How a child refits Θ: ``mode`` (statistics or refit), why, and the phase-2 solver a refit runs."""

    mode: str
    why: str
    solver: str


# The closed form from the statistics fits squared loss, where a first-order refit fits the job's
# cross-entropy: forced on digits / hpc / storms it ended +0.00 / -1.15 / -0.73 pp against a fresh job,
# the L-BFGS refit -0.00 / -0.23 / -0.16 pp (bench.incremental, 10 seeds). So against a cross-entropy
# refit, ``auto`` takes the statistics only where they are this many times cheaper.
STATISTICS_ADVANTAGE = 4.0


def plan(requested: str, cfg: QuantitativeConfig, parent_statistics: stats_lib.Statistics | None,
         parent_digest: str, *, n_new: int, n_union: int, n_val: int, d: int, hidden: list[int], m: int,
         device: str = "cpu") -> Plan:
    """Choose between the closed form from the statistics and phase 2 on the union (see the module doc).

    ``auto`` weighs the two by the cost model, when the parent kept statistics of this very structure.
    Phase 2 on the union is the job's solver; ``auto`` means a first-order method from the parent's Θ with
    no closed form first, since the parent's weights are already a fitted start
    (``cost_model.choose_child_solver``: L-BFGS unless it is much dearer than Adam). The statistics cost
    N_new D^2 plus one D^3/3 factorisation per lambda, and fit squared loss: against a cross-entropy refit
    they must be ``STATISTICS_ADVANTAGE`` times cheaper. Where the job's phase 2 is the closed form itself
    (``ridge``), they are weighed against the cheaper exact solve of the union (``cost_model.ridge_costs``).
    Without usable statistics it is phase 2 on the union."""
    if requested not in MODES:
        raise ValueError(f"unknown incremental mode {requested!r}: one of {', '.join(MODES)}")
    usable = parent_statistics is not None and parent_statistics.structure == parent_digest
    solver = choose_child_solver(n_union, n_val, d, hidden, m, quantitative_settings(cfg, n_union), device)
    cfg = child_settings(cfg, n_new, n_union)  # the budgets the child's phase 2 runs with
    if requested == "statistics":
        if not usable:
            raise ValueError("the parent kept no sufficient statistics (its path features did not fit "
                             "GLAI_MAX_STATISTICS_BYTES, or it ran without them): use mode 'refit'")
        return Plan("statistics", "asked for: the closed form from the parent's statistics plus the new "
                                  "rows'", "statistics")
    if requested == "refit":
        return Plan("refit", f"asked for: phase 2 ({solver}) on the union of every part's rows", solver)
    if not usable:
        return Plan("refit", f"the parent kept no sufficient statistics: phase 2 ({solver}) on the union's "
                             "rows", solver)
    dim = math.prod(theta_shape(d, hidden, m)[1:]) + 1
    lambdas = len(cfg.ridge_lambdas)
    from_statistics = n_new * dim * dim + lambdas * dim**3 / 3
    if solver != "ridge":  # cross-entropy on every row, or the closed form from the new rows: the cheaper
        speed = DEVICE_SPEEDS.get(device, DEVICE_SPEEDS["cpu"])
        statistics_s = 2 * from_statistics / speed.flops_per_s  # 2 flops per multiply-add, as phase2_seconds
        estimates = phase2_seconds(n_union, n_val, d, hidden, m, cfg, device)
        refit_s = sum(float(estimates[part]) for part in solver.split("+"))  # "ridge+lbfgs": both parts
        if refit_s <= STATISTICS_ADVANTAGE * statistics_s:
            return Plan("refit", f"{solver} on the union from the parent's weights (~{refit_s:.2g} s) fits "
                                 f"the job's cross-entropy and costs at most {STATISTICS_ADVANTAGE:g}x the "
                                 f"squared-loss closed form from the statistics (~{statistics_s:.2g} s)",
                        solver)
        return Plan("statistics", f"the closed form from the statistics and the new rows "
                                  f"(~{statistics_s:.2g} s) is over {STATISTICS_ADVANTAGE:g}x cheaper than "
                                  f"{solver} on the union (~{refit_s:.2g} s)", "statistics")
    costs = ridge_costs(n_union, n_val, d, hidden, m, lambdas)
    union = choose_ridge_method(costs, cfg.max_normal_matrix_bytes)
    if union is not None and union.flops < from_statistics:
        return Plan("refit", f"the closed form of the union's rows ({union.method}, {union.flops:.2g} "
                             f"flops) is cheaper than from the statistics ({from_statistics:.2g})", solver)
    return Plan("statistics", "the parent kept sufficient statistics: the closed form on the union from the "
                              "new rows only", "statistics")


def run_incremental(parent: Parent, old_parts: list[PlacedPart], new_parts: list[PlacedPart],
                    class_names: list[str], config: TrainConfig, hooks: Hooks, mode: str = "auto",
                    keep_statistics: bool = True, chosen_plan: Plan | None = None) -> IncrementalResult:
    """Refit Θ on the parent's structure for old + new parts (``old_parts`` may lack training rows in
    statistics mode). Reports one phase, ``quantitative``. ``chosen_plan``: the caller's ``plan`` (made
    before placing the rows, to know whether the old parts' training rows are needed)."""
    started = time.monotonic()
    if chosen_plan is None:
        block0 = parent.block
        chosen_plan = plan(mode, config.quantitative, parent.statistics,
                           stats_lib.structure_digest(block0.structure),
                           n_new=sum(p.train_rows for p in new_parts),
                           n_union=sum(p.train_rows for p in old_parts + new_parts),
                           n_val=sum(len(p.val) for p in old_parts + new_parts), d=block0.in_features,
                           hidden=block0.hidden, m=len(class_names), device=block0.theta.device.type)
    chosen, why = chosen_plan.mode, chosen_plan.why
    block = grow_classes(parent.block, len(class_names))
    block.set_theta_mask(None)  # a pruned parent's zeros are no constraint on its child
    val = concat([p.val for p in old_parts + new_parts])
    rows_added = sum(p.train_rows + len(p.val) for p in new_parts)
    new_train = [p.train for p in new_parts if p.train is not None]
    result_stats: stats_lib.Statistics | None = None
    chosen_settings: dict[str, str] = {}  # why each automatic phase-2 value was picked (refit)
    effective: dict[str, Any] = {"chosen": chosen_settings}
    autocast = resolve_precision(config.precision, block.theta.device)  # as a fresh job's phase 2
    if chosen == "statistics":
        assert parent.statistics is not None
        history, result_stats, solution = _statistics_phase(block, parent.statistics, concat(new_train), val,
                                                            class_names, config, hooks, started,
                                                            [p.part.to_dict() for p in new_parts])
        solver, stopped_by, extra = "statistics", "solved", {"ridge_lambda": solution.relative_lambda,
                                                             "temperature": solution.temperature}
        best_accuracy = max(h["val_accuracy"] for h in history)
    else:
        missing = [p.part.dataset_id for p in old_parts + new_parts if p.train is None]
        if missing:
            raise ValueError(f"refit needs the training rows of every part (missing: {missing})")
        train = concat([p.train for p in old_parts + new_parts if p.train is not None])
        quantitative = child_settings(config.quantitative, sum(p.train_rows for p in new_parts), len(train),
                                      chosen_settings)
        quantitative.solver = chosen_plan.solver  # type: ignore[assignment]
        quant = quantitative_phase(block, train, val, quantitative, hooks,
                                   phase_path(hooks.checkpoint_dir, PHASE), config.seed, autocast)
        block = quant.model  # type: ignore[assignment]
        history, solver, stopped_by = quant.history, str(quant.extra.get("solver")), quant.stopped_by
        extra, best_accuracy = {"epochs": quantitative.epochs}, quant.best_accuracy
        effective = {"quantitative": section_values(quantitative), "chosen": chosen_settings}
        if not quant.skipped:
            hooks.on_phase_end(PHASE, {"best_accuracy": quant.best_accuracy, "steps": float(len(history)),
                                       "seconds": quant.seconds})
    seconds = time.monotonic() - started
    block.eval()
    # Both phases score the parent's Θ on the union's validation rows as their step 0: no second pass.
    warm = history[0]["val_accuracy"]
    parts_accuracy = [{"dataset_id": p.part.dataset_id, "rows": p.train_rows + len(p.val),
                       "val_rows": len(p.val), "val_accuracy": evaluate(block, p.val.x, p.val.y)[1]}
                      for p in old_parts + new_parts]
    d, hidden, m = block.in_features, block.hidden, block.out_features
    summary = {
        "glai_accuracy": best_accuracy,
        "warm_start_accuracy": warm,
        "glai_seconds": seconds,
        "phase2_solver": solver,
        "stopped_by": stopped_by,
        "glai_hidden": hidden,
        "glai_trainable_params": glai_trainable_count(d, hidden, m),
        "structure_params": mlp_param_count(d, hidden, m),
        "structural_epochs": 0,
        "training_precision": precision_label(autocast, block.theta.device),
        "effective_settings": effective,
        "incremental": {"mode": chosen, "why": why, "rows_added": rows_added,
                        "train_rows": sum(p.train_rows for p in old_parts + new_parts),
                        "new_train_rows": sum(p.train_rows for p in new_parts),
                        "statistics_rows": result_stats.rows if result_stats is not None else None,
                        "classes_added": [c for c in class_names if c not in parent.class_names],
                        "parts": parts_accuracy, **extra},
    }
    if chosen == "statistics" and not keep_statistics:
        result_stats = None
    return IncrementalResult(block, parent.standardizer, list(class_names), result_stats, summary,
                             {PHASE: history})


def _statistics_phase(block: GLAIBlock, parent_stats: stats_lib.Statistics, new_train: DeviceSet,
                      val: DeviceSet, class_names: list[str], config: TrainConfig, hooks: Hooks,
                      started: float,
                      new_parts: list[dict[str, Any]]) -> tuple[list[dict[str, float]], stats_lib.Statistics,
                                                                 Any]:
    """Step 0: the parent's Θ; step 1: the closed form on parent + new sums. The better one stays."""
    cfg = quantitative_settings(config.quantitative, len(new_train))
    hooks.on_phase_start(PHASE)
    val = val.with_gates(block.structure)
    history: list[dict[str, float]] = []
    best = Best()

    def record(step: int, info: dict[str, float]) -> None:
        metrics = {**evaluate_point(block, None, val), **info}
        metrics.pop("train_loss", None)  # no training pass here: the training rows are not all at hand
        if best.improves(metrics["val_accuracy"], metrics["val_loss"]):
            best.take(block, step, metrics["val_accuracy"], metrics["val_loss"])
        seconds = time.monotonic() - started
        history.append({"step": float(step), "seconds": seconds, **metrics})
        emit(hooks, PHASE, step, 1, metrics, seconds)

    record(0, {})
    new_stats = stats_lib.compute(block, new_train.with_gates(block.structure), class_names, new_parts)
    total = stats_lib.combine([parent_stats, new_stats], class_names)
    solver_block = GLAIBlock.from_structure(block.structure, warm_start=cfg.warm_start)
    solution = stats_lib.solve(solver_block, total, val, cfg.ridge_lambdas, cfg.warm_start)
    block.load_state_dict(solver_block.state_dict())
    record(1, {"ridge_lambda": solution.relative_lambda, "temperature": solution.temperature})
    assert best.weights is not None
    block.load_state_dict(best.weights)
    hooks.on_phase_end(PHASE, {"best_accuracy": best.accuracy, "steps": 2.0,
                               "seconds": time.monotonic() - started})
    return history, total, solution


__all__ = ["MODES", "IncrementalResult", "Parent", "Plan", "grow_classes", "grow_structure", "plan",
           "run_incremental"]
