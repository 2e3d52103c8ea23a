"""The whole GLAI job: structure, quantitative phase, pruning and the parameter-matched MLP baseline.

Phases report through ``Hooks`` as structural, quantitative, pruning and baseline. With
``hooks.checkpoint_dir`` set every phase checkpoints after each step and a rerun resumes: finished
phases are reloaded from their marker and skipped (their ``on_phase_end`` is not repeated).

Time to target: target = baseline best validation accuracy - 0.005. GLAI's clock runs over the
structural then the quantitative phase (training wall time of each step, evaluation, gate caching and
closed-form solves included; S after any structural epoch is already a usable model); the baseline's
over its own epochs. The first step whose validation accuracy reaches the target gives the time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glai_core import prune_checkpoint
from glai_core.checkpoint import PhaseState, load_checkpoint, phase_path
from glai_core.compute import native_bf16_cpu, precision_label, resolve_device, resolve_precision
from glai_core.config import BaselineConfig, PruningConfig, StructuralConfig, TrainConfig
from glai_core.data import LoadedData
from glai_core.defaults import adapt, adaptive_reduction, baseline_settings, structural_settings
from glai_core.hooks import Cancelled, Hooks
from glai_core.metrics import GateCache, evaluate, structural_distances
from glai_core.model import GLAIBlock, ParameterMatch, StructuralMLP, match_parameters
from glai_core.preprocess import Standardizer
from glai_core.prune import PruneResult, pruning_sweep
from glai_core.solvers import quantitative_phase
from glai_core.streaming import place
from glai_core.train import Best, DeviceSet, FitResult, FitSettings, emit, evaluate_point, fit

TARGET_MARGIN = 0.005
PRUNE_SCORE_ROWS = 4096  # training rows for the data-weighted unit scores of structured pruning


@dataclass
class PipelineResult:
    match: ParameterMatch
    standardizer: Standardizer
    structure: StructuralMLP
    glai: GLAIBlock
    pruned: list[PruneResult]
    baseline: StructuralMLP | None
    summary: dict[str, Any]
    histories: dict[str, list[dict[str, float]]]  # per phase, one metrics dict per step


def architecture_match(d: int, hidden: list[int], m: int, reduction_factor: float | str | None, n: int,
                       chosen: dict[str, str] | None = None) -> ParameterMatch:
    """GLAI's widths: parameter-matched (None), a given r, or ``"adaptive"`` (``defaults.adaptive_reduction``,
    recorded in ``chosen``)."""
    if reduction_factor == "adaptive":
        r, why = adaptive_reduction(d, hidden, m, n)
        if chosen is not None:
            chosen["architecture.reduction_factor"] = why
        return match_parameters(d, hidden, m, r)
    return match_parameters(d, hidden, m, None if reduction_factor is None else float(reduction_factor))


def _n_classes(data: LoadedData) -> int:
    labels = [int(data.y.max())] + ([int(data.y_val.max())] if data.y_val is not None else [])
    return max(len(data.class_names), max(labels) + 1)


def run_pipeline(data: LoadedData, config: TrainConfig, hooks: Hooks) -> PipelineResult:
    """Train GLAI (and the baseline) on ``data``; deterministic on CPU for a fixed ``config.seed``."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    # Split by index, fit the standardiser and place both splits block by block (glai_core.streaming):
    # no split copies, no standardised copy beside the memory map; on a GPU the data stays on the device
    # up to the budget, else batches are gathered from pinned host memory.
    placed = place(data.x, data.y, data.x_val, data.y_val, n_classes=len(data.class_names),
                   validation_fraction=config.validation_fraction, seed=config.seed, device=device,
                   budget_bytes=config.device_memory_budget_bytes)
    train, val, standardizer = placed.train, placed.val, placed.standardizer
    d, m = train.x.shape[1], _n_classes(data)
    config, effective = adapt(config, len(train), d, m)
    arch = config.architecture
    match = architecture_match(d, arch.hidden, m, arch.reduction_factor, len(train), effective["chosen"])
    ckpt_dir = hooks.checkpoint_dir
    autocast = resolve_precision(config.precision, device)

    structural = structural_phase(train, val, match.glai_hidden, m, config.structural, hooks,
                                  phase_path(ckpt_dir, "structural"), config.seed, autocast)
    hooks_end(hooks, "structural", structural)
    structure = structural.model
    assert isinstance(structure, StructuralMLP)
    block = GLAIBlock.from_structure(structure, warm_start=config.quantitative.warm_start)
    quant = quantitative_phase(block, train, val, config.quantitative, hooks,
                               phase_path(ckpt_dir, "quantitative"), config.seed, autocast)
    hooks_end(hooks, "quantitative", quant)

    pruned: list[PruneResult] = []
    if config.pruning.enabled and config.pruning.sparsities:
        pruned = pruning_phase(block, train, val, config.pruning, config.quantitative.batch_size, hooks,
                               config.seed, autocast)
    baseline = None
    if config.baseline.enabled:
        baseline = baseline_phase(train, val, arch.hidden, m, config.baseline, hooks,
                                  phase_path(ckpt_dir, "baseline"), config.seed, autocast)
        hooks_end(hooks, "baseline", baseline)
    histories = {"structural": structural.history, "quantitative": quant.history}
    if baseline is not None:
        histories["baseline"] = baseline.history
    summary = build_summary(match, structural, quant, baseline, pruned)
    summary["training_precision"] = precision_label(autocast, device)
    summary["effective_settings"] = effective
    return PipelineResult(match=match, standardizer=standardizer, structure=structure, glai=block,
                          pruned=pruned, summary=summary, histories=histories,
                          baseline=None if baseline is None else baseline.model)  # type: ignore[arg-type]


def hooks_end(hooks: Hooks, phase: str, result: FitResult) -> None:
    """Phase summary, reported only when the phase ran in this call (not when reloaded finished)."""
    if result.skipped:
        return
    last = result.history[-1] if result.history else {}
    summary = {"best_accuracy": result.best_accuracy, "steps": float(len(result.history)),
               "seconds": result.seconds, "final_val_accuracy": last.get("val_accuracy", float("nan"))}
    hooks.on_phase_end(phase, summary)


# ------------------------------------------------------------------------------------ structural

RATE = "path_distance_per_100_steps"


def stability_rule(cfg: StructuralConfig):  # noqa: ANN201 (returns a StopRule)
    """Stop once the path distance per 100 optimiser steps stayed below ``threshold`` for ``window``
    consecutive checks, validation loss set no new best over those checks, and at least ``min_epochs``
    epochs ran (checks before ``min_epochs`` count towards the window). Per step, so the rule means the
    same at batch 16 on 150 rows and at batch 512 on 60k. The validation condition keeps S training
    where its gates settle while it still learns (on a few hundred rows they settle within 50 epochs,
    long before S stops improving), and costs nothing where both happen together."""
    def rule(history: list[dict[str, float]]) -> str | None:
        checks = [h[RATE] for h in history if RATE in h]
        recent = checks[-cfg.window:]
        settled = len(recent) >= cfg.window and max(recent) < cfg.threshold
        if settled and _still_improving(history, cfg.window):
            return None
        if settled and RATE in history[-1] and history[-1]["step"] >= cfg.min_epochs:
            return "threshold"
        return None
    return rule


def _still_improving(history: list[dict[str, float]], window: int) -> bool:
    """Validation loss reached a new best within the last ``window`` checks' span of epochs."""
    checks = [h["step"] for h in history if RATE in h]
    if len(checks) < window + 1:
        return False
    since = checks[-window - 1]
    losses = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    before = [v for step, v in losses if step <= since]
    after = [v for step, v in losses if step > since]
    return bool(before and after) and min(after) < min(before) - 1e-4


def structural_phase(train: DeviceSet, val: DeviceSet, hidden: list[int], m: int, cfg: StructuralConfig,
                     hooks: Hooks, checkpoint: Path | None, seed: int,
                     autocast: torch.dtype | None = None) -> FitResult:
    """Train S and stop when its activation pattern on the probe set has settled.

    Every ``check_interval`` epochs the gates on the probe set are compared with those of the previous
    check (the curves ``path_distance`` and ``unit_distance`` have a point per check). The frozen
    structure is S at the stopping epoch (whose gates were found stable), not the best one; but when S
    stops improving on validation first (``patience``: noisy tables overfit while their gates still
    move), the best S so far is frozen, so S never trains longer than an early-stopped MLP would.
    """
    cfg = structural_settings(cfg, len(train))  # unset fields from the data (a no-op after adapt)
    torch.manual_seed(seed)
    structure = StructuralMLP(train.x.shape[1], hidden, m).to(train.x.device)
    ckpt = load_checkpoint(checkpoint)
    if ckpt is not None:  # the distance of the next check is measured against the saved weights' gates
        structure.load_state_dict(ckpt.group("model"))
    probe = val.x[:cfg.probe_size]
    previous = {"gates": structure.gates(probe)}
    interval = max(1, cfg.check_interval or 1)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    start = 0 if ckpt is None else ckpt.state.step
    epoch = {"done": start, "checked": start}

    def distances(model: torch.nn.Module) -> dict[str, float]:
        epoch["done"] += 1
        if epoch["done"] % interval and epoch["done"] < cfg.max_epochs:
            return {}
        current = model.gates(probe)  # type: ignore[operator]
        values = structural_distances(previous["gates"], current)
        steps = (epoch["done"] - epoch["checked"]) * steps_per_epoch
        values[RATE] = values["path_distance"] * 100.0 / max(1, steps)
        previous["gates"], epoch["checked"] = current, epoch["done"]
        return values

    settings = FitSettings(epochs=cfg.max_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                           weight_decay=cfg.weight_decay, patience=cfg.patience, keep_best="patience",
                           seed=seed + 1, autocast=autocast)
    return fit(structure, train, val, settings, hooks, "structural", checkpoint=checkpoint,
               epoch_metrics=distances, stop_rule=stability_rule(cfg))


# ------------------------------------------------------------------------------------ baseline

def baseline_phase(train: DeviceSet, val: DeviceSet, hidden: list[int], m: int, cfg: BaselineConfig,
                   hooks: Hooks, checkpoint: Path | None, seed: int,
                   autocast: torch.dtype | None = None) -> FitResult:
    """The reference-width MLP, same loop and data, early-stopped on validation; best weights kept."""
    cfg = baseline_settings(cfg, len(train))  # unset fields from the data (a no-op after adapt)
    torch.manual_seed(seed + 7)
    model = StructuralMLP(train.x.shape[1], hidden, m).to(train.x.device)
    settings = FitSettings(epochs=cfg.max_epochs, lr=cfg.lr, batch_size=cfg.batch_size, patience=cfg.patience,
                           keep_best=True, seed=seed + 3, autocast=autocast)
    return fit(model, train, val, settings, hooks, "baseline", checkpoint=checkpoint)


# ------------------------------------------------------------------------------------ pruning

class _Forwarding(Hooks):
    """Fine-tuning inside the sweep: keeps the cancel flag, drops per-epoch events (steps = levels)."""

    def __init__(self, parent: Hooks) -> None:
        self.parent = parent

    def should_stop(self) -> bool:
        return self.parent.should_stop()


def pruning_phase(block: GLAIBlock, train: DeviceSet, val: DeviceSet, cfg: PruningConfig, batch_size: int,
                  hooks: Hooks, seed: int, autocast: torch.dtype | None = None) -> list[PruneResult]:
    """Path-norm pruning sweep (``glai_core.prune``), fine-tuned by the same first-order loop.

    One event per sparsity level (step = level). Fine-tuning keeps its best validation point. With
    ``hooks.checkpoint_dir`` every level is checkpointed (``glai_core.prune_checkpoint``): a resumed
    sweep reloads the levels done and runs the rest, a finished one is reloaded and not run (nor
    announced) again, so a resumed job's phase never goes back to pruning.
    """
    checkpoint = phase_path(hooks.checkpoint_dir, "pruning")
    reference = block.theta
    saved = prune_checkpoint.load_sweep(checkpoint, list(cfg.sparsities), reference.device, reference.dtype)
    done = saved.results if saved is not None else []
    state = saved.state if saved is not None else PhaseState()
    if state.finished:
        return done
    hooks.on_phase_start("pruning")
    started = time.monotonic() - state.seconds
    frequency = GateCache.build(block.structure, train.x).frequency()
    quiet = _Forwarding(hooks)

    def finetune(candidate: GLAIBlock) -> GLAIBlock:
        if cfg.finetune_epochs <= 0:
            return candidate
        tr, va = train.with_gates(candidate.structure), val.with_gates(candidate.structure)
        start = evaluate_point(candidate, None, va)
        best = Best()
        best.take(candidate, 0, start["val_accuracy"], start["val_loss"])
        settings = FitSettings(epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=batch_size, seed=seed + 5,
                               autocast=autocast)
        fit(candidate, tr, va, settings, quiet, "pruning", best=best, announce=False)
        return candidate

    def evaluate_block(candidate: GLAIBlock) -> float:
        return evaluate(candidate, val.x, val.y)[1]

    def report(_index: int, result: PruneResult) -> None:
        done.append(result)
        metrics = {"sparsity": float(result.sparsity), "pruned_accuracy": float(result.accuracy),
                   "accuracy_before_finetune": float(result.accuracy_before_finetune)}
        state.step, state.seconds = len(done), time.monotonic() - started
        state.history.append({"step": float(state.step), "seconds": state.seconds, **metrics})
        if checkpoint is not None:  # before the event, as every phase does
            prune_checkpoint.save_level(checkpoint, state, done)
        emit(hooks, "pruning", state.step, len(cfg.sparsities), metrics, state.seconds)
        if hooks.should_stop():
            raise Cancelled("pruning stopped")

    remaining = list(cfg.sparsities)[len(done):]
    if remaining:
        pruning_sweep(block, remaining, cfg.structured, finetune, evaluate_block, frequency,
                      x=train.x[:PRUNE_SCORE_ROWS], on_result=report)
    if checkpoint is not None:
        prune_checkpoint.mark_finished(checkpoint, state)
    hooks.on_phase_end("pruning", {f"{r.sparsity:g}": float(r.accuracy) for r in done})
    return done


# ------------------------------------------------------------------------------------ summary

def time_to_target(histories: list[list[dict[str, float]]], target: float | None) -> float | None:
    """Seconds until validation accuracy first reaches ``target``; the histories run one after another."""
    if target is None:
        return None
    offset = 0.0
    for history in histories:
        for point in history:
            if point.get("val_accuracy", float("-inf")) >= target:
                return offset + point["seconds"]
        if history:
            offset += history[-1]["seconds"]
    return None


PROTOCOLS = {
    "speedup": "(a) time to target: the MLP's best validation accuracy - 0.5 pp; MLP seconds / GLAI seconds, "
               "GLAI's clock over phases 1 and 2 (the paper's protocol)",
    "total_time_speedup": "(b) total training time, early stopping included, of each model: MLP seconds / "
                          "GLAI seconds (what a user waits for)",
}


def build_summary(match: ParameterMatch, structural: FitResult, quant: FitResult, baseline: FitResult | None,
                  pruned: list[PruneResult]) -> dict[str, Any]:
    baseline_acc = baseline.best_accuracy if baseline is not None else None
    target = None if baseline_acc is None else baseline_acc - TARGET_MARGIN
    glai_tt = time_to_target([structural.history, quant.history], target)
    base_tt = time_to_target([baseline.history], target) if baseline is not None else None
    glai_total = structural.seconds + quant.seconds
    base_total = baseline.seconds if baseline is not None else None
    return {
        "glai_accuracy": quant.best_accuracy,
        "structure_accuracy": structural.history[-1]["val_accuracy"] if structural.history else None,
        "warm_start_accuracy": quant.history[0]["val_accuracy"] if quant.history else None,
        "baseline_accuracy": baseline_acc,
        "pruned": {f"{r.sparsity:g}": float(r.accuracy) for r in pruned},
        "structural_epochs": len(structural.history),
        "baseline_epochs": len(baseline.history) if baseline is not None else None,
        "glai_seconds": glai_total,
        "baseline_seconds": base_total,
        "target_accuracy": target,
        "glai_time_to_target_s": glai_tt,
        "baseline_time_to_target_s": base_tt,
        "speedup": base_tt / glai_tt if glai_tt and base_tt is not None else None,
        "total_time_speedup": base_total / glai_total if base_total is not None and glai_total > 0 else None,
        "protocols": PROTOCOLS,
        "phase2_solver": quant.extra.get("solver"),
        "reduction_factor": match.reduction_factor,
        "parameter_matched": match.parameter_matched,
        "glai_hidden": match.glai_hidden,
        "reference_hidden": match.reference_hidden,
        "mlp_params": match.mlp_params,
        "glai_trainable_params": match.glai_trainable_params,
        "structure_params": match.structure_params,
        "stopped_by": structural.stopped_by,
    }


__all__ = ["PipelineResult", "run_pipeline", "structural_phase", "baseline_phase", "pruning_phase",
           "time_to_target", "build_summary", "stability_rule", "resolve_device", "resolve_precision",
           "native_bf16_cpu", "precision_label", "PhaseState"]
