"""Sweeps in one job: K heads, GLAI and MLP alike, trained side by side in one batched pass over the data.

``{"lr": [...], "reduction_factor": [...], "seed": [...]}`` makes a grid. GLAI heads take every combination
(lr is their structural phase's Adam rate, r their width, seed their initialisation); MLP heads every (lr,
seed) pair (r does not apply to them). All heads share the rows, the split, the batch size
(``structural.batch_size``) and the shuffled batch order (the job's seed): each mini-batch is gathered
once and every head steps on it, through stacked weights (``glai_core.stacked``: one GEMM for the first
layer of every head, ``baddbmm`` above it, one Adam update for all).

Each head keeps its own curves and its own early stopping, by the single-job rules: a structure freezes
when its gates settle or its validation stops improving (at its best then), an MLP stops on patience with
its best weights. A stopped head leaves the stack, so the pass gets cheaper as heads finish. Once every
structure is frozen, the GLAI heads' phase 2 joins the same pass (first-order, per-head backtracking and
patience, on cached gates), while MLP heads may still be training. Then the best GLAI head's phase 2 is
finished by the single-job solver (``solvers.quantitative_phase``, so the kept model is what its own job
would give), and the report lists accuracy, parameters and time per head with the Pareto front.

With ``"halving"`` in the spec, successive halving (``glai_core.halving``) also cuts each kind's heads at
rungs of the pass: a cut head stops at its best weights and is reported with ``pruned_at``; the kept
models and the front come from the heads that finished.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from glai_core.compute import precision_label, resolve_device, resolve_precision
from glai_core.config import TrainConfig
from glai_core.cost_model import choose_phase2, ridge_costs
from glai_core.data import LoadedData
from glai_core.defaults import adapt
from glai_core.halving import Halving, cut
from glai_core.hooks import Cancelled, Event, Hooks
from glai_core.metrics import evaluate, structural_distances
from glai_core.model import GLAIBlock, StructuralMLP, glai_trainable_count, mlp_param_count
from glai_core.pipeline import RATE, architecture_match
from glai_core.preprocess import Standardizer
from glai_core.solvers import quantitative_phase
from glai_core.stacked import StackedAdam, StackedGLAI, StackedMLP, head_scores, init_heads
from glai_core.stacked_ridge import dual_bytes, stacked_dual_fit
from glai_core.stacked_steps import make_stacked_step
from glai_core.streaming import place
from glai_core.train import EVAL_BATCH, DeviceSet

SWEEP_KEYS = ("lr", "reduction_factor", "seed")
STRUCTURAL, QUANTITATIVE, BASELINE = "structural", "quantitative", "baseline"


@dataclass(frozen=True)
class Head:
    """One point of the grid."""

    id: int
    kind: str  # "glai" or "mlp"
    lr: float
    seed: int
    reduction_factor: float | str | None = None  # GLAI only
    hidden: tuple[int, ...] = ()  # S's widths (GLAI) or the reference widths (MLP)


@dataclass
class HeadResult:
    head: Head
    val_accuracy: float = float("-inf")
    val_loss: float = float("inf")
    params: int = 0
    seconds: float = 0.0  # sweep wall time when the head was done (its own model was final)
    epochs: dict[str, int] = field(default_factory=dict)
    stopped_by: dict[str, str] = field(default_factory=dict)
    model: Any = None  # StructuralMLP (S of a GLAI head, or the MLP) then GLAIBlock for GLAI heads
    pruned_at: int | None = None  # the halving rung (pass epoch) that stopped it before it finished

    def report(self) -> dict[str, Any]:
        head = asdict(self.head)
        head["hidden"] = list(self.head.hidden)
        return {**head, "val_accuracy": self.val_accuracy, "val_loss": self.val_loss, "params": self.params,
                "seconds": self.seconds, "epochs": self.epochs, "stopped_by": self.stopped_by,
                "pruned_at": self.pruned_at}

    @property
    def finished(self) -> bool:
        """Trained to its own stop (a GLAI head through phase 2), not cut by a halving rung."""
        return self.pruned_at is None


@dataclass
class SweepResult:
    standardizer: Standardizer
    glai: GLAIBlock | None
    baseline: StructuralMLP | None
    heads: list[HeadResult]
    summary: dict[str, Any]
    train: DeviceSet
    val: DeviceSet


def grid(sweep: dict[str, list[Any]], config: TrainConfig, d: int, m: int, n: int,
         lr_glai: float, lr_mlp: float, with_mlp: bool) -> list[Head]:
    """Every GLAI combination, then every MLP (lr, seed) pair; values not swept are the job's own."""
    lrs = list(sweep.get("lr") or [None])
    factors = list(sweep.get("reduction_factor") or [config.architecture.reduction_factor])
    seeds = list(sweep.get("seed") or [config.seed])
    heads: list[Head] = []
    for lr, r, seed in itertools.product(lrs, factors, seeds):
        match = architecture_match(d, config.architecture.hidden, m, None if r == "auto" else r, n)
        heads.append(Head(len(heads), "glai", float(lr or lr_glai), int(seed), r, tuple(match.glai_hidden)))
    if with_mlp:
        for lr, seed in itertools.product(lrs, seeds):
            heads.append(Head(len(heads), "mlp", float(lr or lr_mlp), int(seed), None,
                              tuple(config.architecture.hidden)))
    return heads


# ------------------------------------------------------------------------------------ the groups

@dataclass
class _Rules:
    """One group's stopping rules (the single job's, see ``pipeline`` and ``train.fit``)."""

    max_epochs: int
    patience: int | None
    restore: str  # "always", "patience" (S: only when patience ended it) or "never"
    threshold: float = 0.0
    window: int = 0
    min_epochs: int = 0
    check_interval: int = 0  # 0: no structure checks
    backtrack: bool = False
    decay: bool = False  # linear learning-rate decay to 0 at max_epochs (phase 2)


@torch.no_grad()
def evaluate_stack(model: StackedMLP | StackedGLAI, val: DeviceSet,
                   gates: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """(K,) validation loss and accuracy of every head, one pass over the validation rows."""
    n = len(val)
    loss = torch.zeros(model.heads, dtype=torch.float64)
    correct = torch.zeros(model.heads, dtype=torch.float64)
    for start in range(0, n, EVAL_BATCH):
        part = slice(start, start + EVAL_BATCH)
        if isinstance(model, StackedGLAI):
            assert gates is not None
            logits = model(val.x[part], [g[:, part] for g in gates])
        else:
            logits = model(val.x[part])
        part_loss, part_correct = head_scores(logits, val.y[part])
        loss += part_loss.cpu()
        correct += part_correct.double().cpu()
    return loss / n, correct / n


class _Group:
    """Heads of one kind in one stack on the shared batches; stopped heads leave the stack."""

    def __init__(self, phase: str, model: StackedMLP | StackedGLAI, heads: list[Head], lrs: list[float],
                 rules: _Rules, val: DeviceSet, weight_decay: float = 0.0,
                 gates: tuple[list[Tensor], list[Tensor]] | None = None, probe: Tensor | None = None,
                 start: list[tuple[float, float]] | None = None,
                 compute_dtype: torch.dtype | None = None) -> None:
        self.phase, self.model, self.rules, self.val = phase, model, rules, val
        self.heads = list(heads)  # the heads still in the stack, in stack order
        self.base_lr = [float(v) for v in lrs]
        self.scale = [1.0] * len(heads)
        self.optimizer = StackedAdam(list(model.parameters()), lrs, weight_decay=weight_decay)
        self.step_fn = make_stacked_step(model, self.optimizer, compute_dtype)
        self.train_gates, self.val_gates = gates if gates is not None else (None, None)
        self.probe = probe
        self.previous = self._probe_gates() if probe is not None else None
        self.checked = [0] * len(heads)
        self.epoch = 0
        self.stale = [0] * len(heads)
        self.best: list[tuple[float, float, int]] = [(float("-inf"), float("inf"), -1)] * len(heads)
        self.min_loss = [float("inf")] * len(heads)
        self.best_state: list[list[Tensor] | None] = [None] * len(heads)
        self.rates: list[list[float]] = [[] for _ in heads]
        self.finished: list[tuple[Head, Any, dict[str, Any]]] = []
        self.loss_sum: Tensor | float = 0.0
        if start is not None:  # phase 2: the warm start is step 0 and the best point so far
            for k, (acc, loss) in enumerate(start):
                self.best[k], self.min_loss[k] = (acc, loss, 0), loss
                self.best_state[k] = self._slice(k)

    # --- per head state ---------------------------------------------------------------------------

    def _slice(self, k: int) -> list[Tensor]:
        return [p[k].detach().clone() for p in self.model.parameters()]

    @torch.no_grad()
    def _load(self, k: int, state: list[Tensor]) -> None:
        for p, value in zip(self.model.parameters(), state, strict=True):
            p[k] = value

    def _probe_gates(self) -> list[Tensor]:
        assert isinstance(self.model, StackedMLP) and self.probe is not None
        return self.model.gates(self.probe)

    # --- the pass ---------------------------------------------------------------------------------

    def set_rates(self) -> None:
        step = self.epoch + 1
        decay = max(0.0, (self.rules.max_epochs - step + 1) / max(1, self.rules.max_epochs)) \
            if self.rules.decay else 1.0
        self.optimizer.lr = [base * scale * decay for base, scale in zip(self.base_lr, self.scale,
                                                                         strict=True)]

    def step(self, x: Tensor, y: Tensor, index: Tensor) -> None:
        gates = None if self.train_gates is None else [g.index_select(1, index) for g in self.train_gates]
        self.loss_sum = self.step_fn(x, y, gates) + self.loss_sum

    def evaluate(self) -> tuple[Tensor, Tensor]:
        return evaluate_stack(self.model, self.val, self.val_gates)

    def end_epoch(self, n_train: int, steps_per_epoch: int, seconds: float,
                  export: Any) -> dict[str, float]:
        """Score every head, apply its rules, retire the stopped ones; returns this epoch's curve points."""
        self.epoch += 1
        loss, accuracy = self.evaluate()
        rates = self._distances(steps_per_epoch)
        train_loss = (torch.as_tensor(self.loss_sum, dtype=torch.float64).cpu() / n_train).expand(
            len(self.heads)).tolist()
        self.loss_sum = 0.0
        metrics: dict[str, float] = {}
        keep: list[int] = []
        for k, head in enumerate(self.heads):
            acc, val_loss = float(accuracy[k]), float(loss[k])
            prefix = f"h{head.id}/"
            metrics.update({prefix + "train_loss": train_loss[k], prefix + "val_loss": val_loss,
                            prefix + "val_accuracy": acc})
            if rates is not None and rates[k] is not None:
                metrics[prefix + RATE] = float(rates[k])
            stopped = self._rules(k, acc, val_loss, rates[k] if rates is not None else None)
            if stopped is None:
                keep.append(k)
                continue
            restore = self.rules.restore == "always" or (self.rules.restore == "patience"
                                                         and stopped == "patience")
            self._retire(k, stopped, restore, (acc, val_loss), seconds, export)
        if len(keep) < len(self.heads):
            self._keep(keep)
        return metrics

    def scores(self) -> dict[int, tuple[float, float]]:
        """Each training head's best (accuracy, loss) so far, by head id."""
        return {head.id: (self.best[k][0], self.best[k][1]) for k, head in enumerate(self.heads)}

    def prune(self, ids: set[int], seconds: float, export: Any) -> None:
        """Stop the training heads in ``ids`` (a halving rung cut them), each at its best weights."""
        keep: list[int] = []
        for k, head in enumerate(self.heads):
            if head.id in ids:
                self._retire(k, "halving", True, self.best[k][:2], seconds, export)
            else:
                keep.append(k)
        if len(keep) < len(self.heads):
            self._keep(keep)

    def _retire(self, k: int, stopped: str, restore: bool, current: tuple[float, float], seconds: float,
                export: Any) -> None:
        """Head ``k`` is done: at its best weights when ``restore`` (scored there), else as it is
        (scored ``current``); its model goes to ``finished``. The caller drops it from the stack."""
        if restore and self.best_state[k] is not None:
            self._load(k, self.best_state[k])
        accuracy, loss = self.best[k][:2] if restore else current
        self.finished.append((self.heads[k], export(self.model, k), {
            "epochs": self.epoch, "stopped_by": stopped, "seconds": seconds,
            "val_accuracy": accuracy, "val_loss": loss}))

    def _rules(self, k: int, acc: float, loss: float, rate: float | None) -> str | None:
        best_acc, best_loss, _ = self.best[k]
        better = acc > best_acc or (acc == best_acc and loss < best_loss)
        improved = better or loss < self.min_loss[k]
        self.min_loss[k] = min(self.min_loss[k], loss)
        if better or math.isinf(best_acc):
            self.best[k] = (acc, loss, self.epoch)
            self.best_state[k] = self._slice(k)
        self.stale[k] = 0 if improved else self.stale[k] + 1
        if self.rules.patience is not None and self.stale[k] >= self.rules.patience:
            return "patience"
        if self.rules.backtrack and self.stale[k] > 0 and self.best_state[k] is not None:
            self._load(k, self.best_state[k])  # the convex phase overshot: back to the best point, half rate
            self.scale[k] *= 0.5
            self.optimizer.restart(k)
        if rate is not None:
            self.rates[k].append(rate)
            recent = self.rates[k][-self.rules.window:]
            if len(recent) >= self.rules.window and max(recent) < self.rules.threshold \
                    and self.epoch >= self.rules.min_epochs:
                return "threshold"
        if self.epoch >= self.rules.max_epochs:
            return "max_epochs"
        return None

    def _distances(self, steps_per_epoch: int) -> list[float | None] | None:
        """Path distance per 100 optimiser steps against each head's previous check (structure checks)."""
        interval = self.rules.check_interval
        if not interval or (self.epoch % interval and self.epoch < self.rules.max_epochs):
            return None
        assert self.previous is not None
        current = self._probe_gates()
        out: list[float | None] = []
        for k, head in enumerate(self.heads):
            widths = head.hidden
            before = [g[k, :, :w] for g, w in zip(self.previous, widths, strict=True)]
            now = [g[k, :, :w] for g, w in zip(current, widths, strict=True)]
            distance = structural_distances(before, now)["path_distance"]
            out.append(distance * 100.0 / max(1, (self.epoch - self.checked[k]) * steps_per_epoch))
            self.checked[k] = self.epoch
        self.previous = current
        return out

    def _keep(self, keep: list[int]) -> None:
        device_index = torch.tensor(keep, dtype=torch.long, device=next(self.model.parameters()).device)
        self.model.keep(device_index)
        self.optimizer.keep(keep)
        for name in ("train_gates", "val_gates"):
            gates = getattr(self, name)
            if gates is not None:
                setattr(self, name, [g.index_select(0, device_index) for g in gates])
        if self.previous is not None:
            self.previous = [g.index_select(0, device_index) for g in self.previous]
        self.heads = [self.heads[k] for k in keep]
        for name in ("checked", "stale", "best", "min_loss", "best_state", "rates", "base_lr", "scale"):
            values = getattr(self, name)
            setattr(self, name, [values[k] for k in keep])

    @property
    def done(self) -> bool:
        return not self.heads


# ------------------------------------------------------------------------------------ the sweep

def _stacked_gates(model: StackedMLP, x: Tensor) -> list[Tensor]:
    parts = [model.gates(x[start:start + EVAL_BATCH]) for start in range(0, len(x), EVAL_BATCH)]
    return [torch.cat([p[level] for p in parts], dim=1) for level in range(len(parts[0]))]


def _progress(hooks: Hooks, phase: str, epoch: int, total: int, metrics: dict[str, float],
              seconds: float) -> None:
    hooks.on_event(Event(phase=phase, step=epoch, total_steps=total, progress=min(1.0, epoch / max(1, total)),
                         metrics=metrics, wall_time=seconds))


def _by_width(heads: list[Head]) -> list[list[Head]]:
    """Heads grouped by widths: one stack each, so a narrow head never computes a wide one's padding."""
    groups: dict[tuple[int, ...], list[Head]] = {}
    for head in heads:
        groups.setdefault(head.hidden, []).append(head)
    return list(groups.values())


def run_sweep(data: LoadedData, config: TrainConfig, sweep: dict[str, Any], hooks: Hooks,
              kinds: tuple[str, ...] = ("glai", "mlp"), finish: bool = True) -> SweepResult:
    """Train the grid (see the module doc); ``sweep["halving"]`` (optional) cuts heads at rungs
    (``glai_core.halving``); ``kinds`` limits it to GLAI or MLP heads (benchmarks); ``finish``: refine the
    best GLAI head's phase 2 with the single job's first-order solver."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    placed = place(data.x, data.y, data.x_val, data.y_val, n_classes=len(data.class_names),
                   validation_fraction=config.validation_fraction, seed=config.seed, device=device,
                   budget_bytes=config.device_memory_budget_bytes)
    train, val = placed.train, placed.val
    n, d, m = len(train), train.x.shape[1], len(data.class_names)
    config, effective = adapt(config, n, d, m)
    s_cfg, q_cfg, b_cfg = config.structural, config.quantitative, config.baseline
    with_mlp = "mlp" in kinds and config.baseline.enabled
    heads = grid(sweep, config, d, m, n, float(s_cfg.lr or 1e-3), float(b_cfg.lr or 1e-3), with_mlp)
    glai_heads = [h for h in heads if h.kind == "glai"] if "glai" in kinds else []
    mlp_heads = [h for h in heads if h.kind == "mlp"]
    results = {h.id: HeadResult(h) for h in glai_heads + mlp_heads}
    batch = int(s_cfg.batch_size or 256)
    steps_per_epoch = math.ceil(n / batch)
    autocast = resolve_precision(config.precision, device)  # every head steps in the job's precision
    started = time.monotonic()

    def mlp_group(phase: str, members: list[Head], rules: _Rules, probe: Tensor | None,
                  weight_decay: float) -> _Group:
        models = init_heads(d, [list(h.hidden) for h in members], m, [h.seed for h in members])
        model = StackedMLP.from_heads(models).to(device)
        return _Group(phase, model, members, [h.lr for h in members], rules, val, weight_decay, probe=probe,
                      compute_dtype=autocast)

    groups: list[_Group] = []
    if glai_heads:
        rules = _Rules(int(s_cfg.max_epochs or 1), s_cfg.patience, "patience", s_cfg.threshold, s_cfg.window,
                       int(s_cfg.min_epochs or 0), int(s_cfg.check_interval or 1))
        groups += [mlp_group(STRUCTURAL, members, rules, val.x[:s_cfg.probe_size], s_cfg.weight_decay)
                   for members in _by_width(glai_heads)]
        hooks.on_phase_start(STRUCTURAL)
    if mlp_heads:
        groups.append(mlp_group(BASELINE, mlp_heads, _Rules(int(b_cfg.max_epochs or 1), b_cfg.patience,
                                                            "always"), None, 0.0))
        if not glai_heads:
            hooks.on_phase_start(BASELINE)
    generator = torch.Generator().manual_seed(config.seed + 1)
    structures: dict[int, StructuralMLP] = {}
    phase2: dict[str, Any] = {}
    halving = Halving.from_spec(sweep.get("halving"))
    race = _Race(halving, {"glai": s_cfg.patience, "mlp": b_cfg.patience}, results)
    pass_epoch = 0
    last_poll = time.monotonic()
    while any(not g.done for g in groups):
        pass_epoch += 1
        active = [g for g in groups if not g.done]
        for g in active:
            g.set_rates()
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch):
            index = order[start:start + batch]
            x, y = train.x[index], train.y[index]
            for g in active:
                g.step(x, y, index)
            if time.monotonic() - last_poll > 1.0:
                last_poll = time.monotonic()
                if hooks.should_stop():
                    raise Cancelled("sweep stopped during an epoch")
        seconds = time.monotonic() - started
        for phase in (STRUCTURAL, QUANTITATIVE, BASELINE):
            members = [g for g in active if g.phase == phase]
            if not members:
                continue
            metrics: dict[str, float] = {}
            for g in members:
                export = _export_theta if phase == QUANTITATIVE else _export_mlp
                metrics.update(g.end_epoch(n, steps_per_epoch, seconds, export))
                _collect(g, results, structures, q_cfg.warm_start)
            if race.at_rung(phase, pass_epoch, members, seconds):
                for g in members:
                    _collect(g, results, structures, q_cfg.warm_start)
            metrics["heads_training"] = float(sum(len(g.heads) for g in members))
            _progress(hooks, phase, members[0].epoch, members[0].rules.max_epochs, metrics, seconds)
            if any(not g.done for g in groups if g.phase == phase):
                continue
            if phase == STRUCTURAL:
                hooks.on_phase_end(STRUCTURAL, {"heads": float(len(glai_heads)), "seconds": seconds})
                hooks.on_phase_start(QUANTITATIVE)
                fitted = [h for h in glai_heads if race.still_in(h.id)]
                phase2 = _phase2(fitted, structures, results, train, val, config, device, hooks, started,
                                 autocast)
                groups += phase2.pop("groups")
                if not phase2["groups_added"]:
                    hooks.on_phase_end(QUANTITATIVE, {"heads": float(len(fitted)),
                                                      "seconds": time.monotonic() - started})
            else:
                hooks.on_phase_end(phase, {"heads": float(len(members)), "seconds": seconds})
        if hooks.should_stop():
            raise Cancelled("sweep stopped between epochs")

    best_glai = _best([results[h.id] for h in glai_heads if results[h.id].finished])
    best_mlp = _best([results[h.id] for h in mlp_heads if results[h.id].finished])
    finished: dict[str, Any] | None = None
    if best_glai is not None and finish and phase2.get("method") != "adam":
        finished = _finish(best_glai, structures[best_glai.head.id], train, val, config, hooks, started)
    summary = _summary(results, best_glai, best_mlp, sweep, effective, {**phase2, "finish": finished},
                       time.monotonic() - started, batch, race.report())
    summary["sweep"]["precision"] = precision_label(autocast, device)
    return SweepResult(placed.standardizer, None if best_glai is None else best_glai.model,
                       None if best_mlp is None else best_mlp.model, list(results.values()), summary, train,
                       val)


class _Race:
    """Successive halving over the pass (``glai_core.halving``): which heads of each kind are still in the
    race, and the rungs' log. Without halving every head stays in."""

    def __init__(self, halving: Halving | None, patience: dict[str, int | None],
                 results: dict[int, HeadResult]) -> None:
        self.halving, self.patience, self.results = halving, patience, results
        self.out: set[int] = set()  # ranked below a cut: never ranked again
        self.rungs: list[dict[str, Any]] = []

    def still_in(self, head_id: int) -> bool:
        return head_id not in self.out

    def at_rung(self, phase: str, epoch: int, members: list[_Group], seconds: float) -> bool:
        """Cut this phase's kind if ``epoch`` is its rung; True when a training head was stopped."""
        kind = "mlp" if phase == BASELINE else "glai"
        if self.halving is None or not self.halving.is_rung(epoch, self.patience[kind]):
            return False
        training = {i: score for g in members for i, score in g.scores().items()}
        scores = {r.head.id: (r.val_accuracy, r.val_loss) for r in self.results.values()
                  if r.head.kind == kind and self.still_in(r.head.id)}
        scores.update(training)
        if len(scores) < 2:
            return False
        kept = cut(scores, self.halving.eta)
        dropped = set(scores) - kept
        stopped = dropped & set(training)
        waiting = dropped - stopped if phase == STRUCTURAL else set()  # frozen structures not yet fitted
        for head_id in stopped | waiting:
            self.results[head_id].pruned_at = epoch
        for head_id in waiting:
            self.results[head_id].stopped_by[QUANTITATIVE] = "halving"
        self.out |= dropped
        export = _export_theta if phase == QUANTITATIVE else _export_mlp
        for g in members:
            g.prune(stopped, seconds, export)
        self.rungs.append({"epoch": epoch, "kind": kind, "phase": phase, "ranked": len(scores),
                           "kept": sorted(kept), "stopped": sorted(stopped | waiting)})
        return bool(stopped)

    def report(self) -> dict[str, Any] | None:
        if self.halving is None:
            return None
        return {"eta": self.halving.eta,
                "first_rung": {kind: self.halving.first(p) for kind, p in self.patience.items()
                               if any(r.head.kind == kind for r in self.results.values())},
                "rungs": self.rungs,
                "how": "at each rung (epochs of the shared pass: first_rung x eta^i) a kind's heads still in "
                       "the race are ranked by validation accuracy; the top 1/eta go on"}


def _export_mlp(model: StackedMLP | StackedGLAI, k: int) -> Any:
    assert isinstance(model, StackedMLP)
    return model.head(k)


def _export_theta(model: StackedMLP | StackedGLAI, k: int) -> Any:
    assert isinstance(model, StackedGLAI)
    return model.head_theta(k)


def phase2_method(n: int, n_val: int, d: int, hidden: list[int], m: int, q_cfg: Any,
                  device: str = "cpu") -> str:
    """How the sweep fits its GLAI heads' Θ: ``adam`` (batched first-order steps in the shared pass) where
    a single job's phase 2 would be Adam alone (``cost_model.choose_phase2``: no closed form first), else
    ``dual`` (the batched closed form, when the cheaper exact method is the dual and one head's N x N
    matrices fit ``max_normal_matrix_bytes``), else ``adam``. On mnist-5k (CPU), where a job picks Adam,
    eight dual solves and a finishing Adam phase took 7.4 s and eight Adam heads 5.0 s."""
    if q_cfg.solver in ("adam", "lbfgs"):
        return "adam"
    if q_cfg.solver == "auto" and choose_phase2(n, n_val, d, hidden, m, q_cfg, device)[0] == "adam":
        return "adam"
    costs = {c.method: c for c in ridge_costs(n, n_val, d, hidden, m, len(q_cfg.ridge_lambdas))}
    dual, primal = costs["dual"], costs["cholesky"]
    if dual_bytes(n, n_val) <= q_cfg.max_normal_matrix_bytes and dual.flops <= primal.flops:
        return "dual"
    return "adam"


def _phase2(heads: list[Head], structures: dict[int, StructuralMLP], results: dict[int, HeadResult],
            train: DeviceSet, val: DeviceSet, config: TrainConfig, device: torch.device, hooks: Hooks,
            started: float, autocast: torch.dtype | None) -> dict[str, Any]:
    """Every GLAI head's phase 2, warm-started from its S: the batched closed form now, or first-order
    groups (stepping in ``autocast``, the job's precision) that join the shared pass. Returns the method
    and the groups to add."""
    q_cfg = config.quantitative
    widest = [max(h.hidden[level] for h in heads) for level in range(len(heads[0].hidden))]
    method = phase2_method(len(train), len(val), train.x.shape[1], widest,
                           structures[heads[0].id].out_features, q_cfg, device.type)
    out: dict[str, Any] = {"method": method, "groups": [], "groups_added": False}
    metrics: dict[str, float] = {}
    for members in _by_width(heads):
        blocks = [GLAIBlock.from_structure(structures[h.id], warm_start=q_cfg.warm_start) for h in members]
        model = StackedGLAI.from_blocks(blocks).to(device)
        shapes = StackedMLP.from_heads([structures[h.id] for h in members]).to(device)
        gates = (_stacked_gates(shapes, train.x), _stacked_gates(shapes, val.x))
        loss, accuracy = evaluate_stack(model, val, gates[1])
        if method == "adam":
            rules = _Rules(int(q_cfg.epochs or 10), q_cfg.patience, "always", backtrack=q_cfg.backtrack,
                           decay=q_cfg.schedule == "linear")
            out["groups"].append(_Group(QUANTITATIVE, model, members, [q_cfg.lr] * len(members), rules, val,
                                        gates=gates, start=list(zip(accuracy.tolist(), loss.tolist(),
                                                                    strict=True)),
                                        compute_dtype=autocast))
            out["groups_added"] = True
            continue
        dims = [glai_trainable_count(b.in_features, b.hidden,
                                     b.out_features) // b.out_features - 1 for b in blocks]
        start_scores = list(zip(accuracy.tolist(), loss.tolist(), strict=True))
        report = stacked_dual_fit(model, dims, train.x, train.y, gates[0], val.x, val.y, gates[1],
                                  [q_cfg.ridge_lambda], q_cfg.warm_start, q_cfg.max_normal_matrix_bytes)
        seconds = time.monotonic() - started
        for k, (head, block, scores) in enumerate(zip(members, blocks, report, strict=True)):
            theta, bias = model.head_theta(k)
            if (scores["val_accuracy"], -scores["val_loss"]) >= (start_scores[k][0], -start_scores[k][1]):
                with torch.no_grad():
                    block.theta.copy_(theta)
                    block.bias.copy_(bias)
                accuracy_k, loss_k = scores["val_accuracy"], scores["val_loss"]
            else:  # the phase never ends below its warm start
                accuracy_k, loss_k = start_scores[k]
            result = results[head.id]
            result.model, result.seconds = block.eval(), seconds
            result.val_accuracy, result.val_loss = accuracy_k, loss_k
            result.params = glai_trainable_count(block.in_features, block.hidden, block.out_features)
            result.epochs[QUANTITATIVE], result.stopped_by[QUANTITATIVE] = 1, "solved"
            prefix = f"h{head.id}/"
            metrics.update({prefix + "val_accuracy": accuracy_k, prefix + "val_loss": loss_k,
                            prefix + "ridge_lambda": scores["ridge_lambda"]})
    if method != "adam":
        _progress(hooks, QUANTITATIVE, 1, 1, metrics, time.monotonic() - started)
    return out


def _collect(group: _Group, results: dict[int, HeadResult], structures: dict[int, StructuralMLP],
             warm_start: bool) -> None:
    """Move the heads that stopped this epoch into their results."""
    for head, model, info in group.finished:
        result = results[head.id]
        result.epochs[group.phase] = int(info["epochs"])
        result.stopped_by[group.phase] = str(info["stopped_by"])
        result.seconds = float(info["seconds"])
        result.val_accuracy, result.val_loss = float(info["val_accuracy"]), float(info["val_loss"])
        if group.phase == STRUCTURAL:
            structures[head.id] = model
            result.model = model
        elif group.phase == QUANTITATIVE:
            theta, bias = model
            block = GLAIBlock.from_structure(structures[head.id], warm_start=warm_start)
            with torch.no_grad():
                block.theta.copy_(theta)
                block.bias.copy_(bias)
            result.model = block.eval()
            result.params = glai_trainable_count(block.in_features, block.hidden, block.out_features)
        else:
            result.model = model
            result.params = mlp_param_count(model.in_features, model.hidden, model.out_features)
    group.finished = []


def _best(results: list[HeadResult]) -> HeadResult | None:
    if not results:
        return None
    return max(results, key=lambda r: (r.val_accuracy, -r.val_loss, -r.params, -r.head.id))


def _finish(best: HeadResult, structure: StructuralMLP, train: DeviceSet, val: DeviceSet, config: TrainConfig,
            hooks: Hooks, started: float) -> dict[str, Any]:
    """The best GLAI head's phase 2 run again as its own job would run it (``solvers.quantitative_phase``
    with the job's solver, from S's warm start: the whole lambda grid, then the first-order refinement
    ``auto`` picks); the better of that and the sweep's closed form is kept."""

    class _Quiet(Hooks):  # one head's phase: keep the cancel flag, not its curves (h<k>/... are)
        def should_stop(self) -> bool:
            return hooks.should_stop()

    candidate = GLAIBlock.from_structure(structure, warm_start=config.quantitative.warm_start)
    result = quantitative_phase(candidate, train, val, config.quantitative, _Quiet(), None, config.seed,
                                resolve_precision(config.precision, train.x.device))
    loss, accuracy = evaluate(candidate, val.x, val.y)
    kept = (accuracy, -loss) > (best.val_accuracy, -best.val_loss)
    if kept:
        best.model = candidate.eval()
        best.val_accuracy, best.val_loss = accuracy, loss
    best.seconds = time.monotonic() - started
    return {"head": best.head.id, "solver": result.extra.get("solver"), "val_accuracy": accuracy,
            "kept": kept,
            "stopped_by": result.stopped_by}


def pareto(results: list[HeadResult]) -> list[int]:
    """Ids of the heads no other head beats on all of accuracy (higher), parameters and time (lower)."""
    front = []
    for r in results:
        dominated = any(o is not r and o.val_accuracy >= r.val_accuracy and o.params <= r.params
                        and o.seconds <= r.seconds and (o.val_accuracy, -o.params, -o.seconds)
                        != (r.val_accuracy, -r.params, -r.seconds) for o in results)
        if not dominated:
            front.append(r.head.id)
    return front


def _summary(results: dict[int, HeadResult], best_glai: HeadResult | None, best_mlp: HeadResult | None,
             sweep: dict[str, Any], effective: dict[str, Any], phase2: dict[str, Any],
             seconds: float, batch: int, halving: dict[str, Any] | None) -> dict[str, Any]:
    glai = [r for r in results.values() if r.head.kind == "glai" and r.finished]
    mlp = [r for r in results.values() if r.head.kind == "mlp" and r.finished]
    summary: dict[str, Any] = {
        "glai_accuracy": best_glai.val_accuracy if best_glai else None,
        "baseline_accuracy": best_mlp.val_accuracy if best_mlp else None,
        "glai_seconds": best_glai.seconds if best_glai else None,
        "baseline_seconds": best_mlp.seconds if best_mlp else None,
        "effective_settings": effective,
        "sweep": {
            "grid": {k: list(sweep[k]) for k in SWEEP_KEYS if sweep.get(k)},
            "heads": [r.report() for r in results.values()],
            "front": {"glai": pareto(glai), "mlp": pareto(mlp)},
            "best": {"glai": best_glai.head.id if best_glai else None,
                     "mlp": best_mlp.head.id if best_mlp else None},
            "phase2": phase2,
            "halving": halving,
            "seconds": seconds,
            "batch_size": batch,
            "how": "one batched pass: every head steps on each shared mini-batch (stacked weights); "
                   "seconds per head = sweep wall time when that head was done",
        },
    }
    if best_glai is not None:
        block = best_glai.model
        summary.update({"glai_hidden": list(block.hidden),
                        "reduction_factor": best_glai.head.reduction_factor,
                        "glai_trainable_params": best_glai.params,
                        "structure_params": mlp_param_count(block.in_features, block.hidden,
                                                            block.out_features)})
    if best_mlp is not None:
        summary.update({"mlp_params": best_mlp.params, "reference_hidden": list(best_mlp.head.hidden)})
    return summary


__all__ = ["SWEEP_KEYS", "Head", "HeadResult", "SweepResult", "grid", "pareto", "run_sweep"]
