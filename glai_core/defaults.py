"""Training settings chosen from the data: batch sizes, budgets, patience and learning rates.

A fixed default in epochs means different things on different data: 30 epochs at batch 512 are 30
optimiser steps on a 150-row table (S barely learns; the structure of a 32-class table stayed at 0.13
accuracy) and 3,500 on Fashion-MNIST. So every setting left unset (``None`` in ``glai_core.config``,
``"auto"`` in the API) is chosen here from the number of training rows N, the input width d and the
classes m, with budgets counted in optimiser steps and converted into epochs of the data at hand. The
constants are measured on the suite of real tables in ``bench.suite`` (docs/benchmarks.md).

``adapt`` returns the resolved config and ``effective_settings``: every value the job runs with, and for
each one chosen here the rule that chose it, so a job's summary says what it did and why.
"""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import dataclass, fields
from typing import Any

from glai_core.config import BaselineConfig, QuantitativeConfig, StructuralConfig, TrainConfig

EPOCH_CAP = 1000  # the service's default GLAI_MAX_EPOCHS: a derived budget never goes above it


@dataclass(frozen=True)
class Rules:
    """The measured constants behind every data-dependent default (see ``bench.suite``)."""

    steps_per_epoch: int = 32  # batch = N / this, as a power of two in [min_batch, max_batch]
    min_batch: int = 16
    max_batch: int = 512
    lr: float = 1e-3  # Adam, structure and baseline
    structural_min_steps: int = 300  # S always trains this many steps before its structure may freeze
    structural_max_steps: int = 6000
    check_steps: int = 32  # path distances compare gates at least this many steps apart
    baseline_max_steps: int = 6000
    patience_steps: int = 200  # epochs without improvement before the MLP stops: at least this many steps
    min_patience_epochs: int = 3
    phase2_steps: int = 320  # first-order phase-2 budget (Adam epochs), from the warm start
    min_phase2_epochs: int = 10
    phase2_patience_epochs: int = 4
    min_child_epochs: int = 3  # a child's first-order phase 2: at least this many epochs of the union
    child_lr_scale: float = 0.5  # ... at this fraction of the job's Adam rate (bench.incremental, 10 seeds)
    child_budget_scale: float = 0.75  # ... and this fraction of the fresh budget times the new rows' share
    min_child_lbfgs_iterations: int = 15  # a child's L-BFGS: at least three validation scores
    child_lbfgs_patience: int = 2  # ... and at most this many scores without improvement


RULES = Rules()


def batch_size(n: int, rules: Rules = RULES) -> int:
    """A power of two near N / steps_per_epoch, within [min_batch, max_batch] (and at most N)."""
    target = max(1.0, n / rules.steps_per_epoch)
    size = 2 ** round(math.log2(target))
    return int(max(1, min(n, max(rules.min_batch, min(rules.max_batch, size)))))


def epochs_for(steps: int, n: int, batch: int, floor: int = 1) -> int:
    """Epochs of N rows at ``batch`` that make at least ``steps`` optimiser steps, in [floor, EPOCH_CAP]."""
    per_epoch = max(1, math.ceil(n / batch))
    return int(min(EPOCH_CAP, max(floor, math.ceil(steps / per_epoch))))


class _Resolver:
    """Fills the unset fields of one config section and records why."""

    def __init__(self, section: str, values: Any, chosen: dict[str, str]) -> None:
        self.section, self.values, self.chosen = section, values, chosen

    def set(self, name: str, value: Any, why: str) -> Any:
        if getattr(self.values, name) is None:
            setattr(self.values, name, value)
            self.chosen[f"{self.section}.{name}"] = why
        return getattr(self.values, name)


def _batch_why(n: int, batch: int, rules: Rules) -> str:
    return (f"N={n:,} training rows: a power of two near N/{rules.steps_per_epoch}, within "
            f"[{rules.min_batch}, {rules.max_batch}] ({math.ceil(n / batch)} steps per epoch)")


def structural_settings(cfg: StructuralConfig, n: int, chosen: dict[str, str] | None = None,
                        rules: Rules = RULES) -> StructuralConfig:
    """A copy of ``cfg`` with its unset fields chosen for N training rows."""
    cfg, chosen = deepcopy(cfg), {} if chosen is None else chosen
    s = _Resolver("structural", cfg, chosen)
    batch = s.set("batch_size", batch_size(n, rules), _batch_why(n, batch_size(n, rules), rules))
    s.set("lr", rules.lr, "Adam's usual rate")
    floor = s.set("min_epochs", epochs_for(rules.structural_min_steps, n, batch),
                  f"at least {rules.structural_min_steps} optimiser steps before the structure may freeze")
    s.set("max_epochs", max(floor, epochs_for(rules.structural_max_steps, n, batch)),
          f"at most {rules.structural_max_steps} optimiser steps (and {EPOCH_CAP} epochs)")
    s.set("check_interval", epochs_for(rules.check_steps, n, batch),
          f"path distances compare gates at least {rules.check_steps} optimiser steps apart")
    s.set("patience", epochs_for(rules.patience_steps, n, batch, rules.min_patience_epochs),
          f"as the MLP's: at least {rules.min_patience_epochs} epochs and {rules.patience_steps} "
          "optimiser steps")
    return cfg


def quantitative_settings(cfg: QuantitativeConfig, n: int, chosen: dict[str, str] | None = None,
                          rules: Rules = RULES) -> QuantitativeConfig:
    cfg, chosen = deepcopy(cfg), {} if chosen is None else chosen
    q = _Resolver("quantitative", cfg, chosen)
    batch = q.set("batch_size", batch_size(n, rules), _batch_why(n, batch_size(n, rules), rules))
    q.set("epochs", epochs_for(rules.phase2_steps, n, batch, rules.min_phase2_epochs),
          f"at least {rules.min_phase2_epochs} epochs and {rules.phase2_steps} optimiser steps")
    q.set("patience", rules.phase2_patience_epochs, "the first, largest-rate epochs may dip below the start")
    return cfg


def child_settings(cfg: QuantitativeConfig, n_new: int, n_union: int, chosen: dict[str, str] | None = None,
                   rules: Rules = RULES) -> QuantitativeConfig:
    """A child's phase 2 on the union: the fresh budget scaled by the new rows' share of the union, at a
    fine-tuning rate.

    The child starts from its parent's fitted weights, near the optimum of the old rows' loss, and the
    union's loss moves from it by the new rows' term only: so the first-order budget (Adam epochs of the
    union, or L-BFGS iterations) is at most the fresh one times n_new / n_union; ``child_budget_scale`` of
    that (at least ``min_child_epochs`` / ``min_child_lbfgs_iterations``; an explicit ``epochs`` is kept),
    since the old rows' term starts near its optimum: over 10 seeds with 50 % new rows, 5 epochs instead
    of 7 cost mnist-5k 0.2 pp and tweets nothing and saved a quarter of the child's time, and 38 L-BFGS
    iterations instead of 100 left hpc's mean unchanged. L-BFGS stops after ``child_lbfgs_patience`` (2)
    scores without improvement instead of 3: over 10 seeds hpc and digits ended where they did and storms
    0.03 pp higher, 15-30 % sooner. Adam's rate is ``child_lr_scale`` times the
    job's: at the full rate the first epochs undo part of the parent's fit, at a small one five epochs do
    not get far. Against a fresh job, over 10 seeds at this budget, at 0.25x / 0.5x / 1x: mnist-5k -0.32 /
    -0.19 / -0.06 pp, tweets +0.06 / -0.08 / -0.20 pp. Batch size and Adam's patience are the fresh
    job's."""
    cfg, chosen = deepcopy(cfg), {} if chosen is None else chosen
    share, scale = n_new / max(1, n_union), rules.child_budget_scale
    if cfg.epochs is None:
        fresh = quantitative_settings(cfg, n_union, rules=rules).epochs or rules.min_phase2_epochs
        cfg.epochs = max(rules.min_child_epochs, math.ceil(fresh * share * scale))
        chosen["quantitative.epochs"] = (f"{scale:g} x a fresh job's {fresh} epochs times the new rows' "
                                         f"share of the union ({share:.0%}), at least "
                                         f"{rules.min_child_epochs}: it starts from the parent's fit")
    iterations = max(rules.min_child_lbfgs_iterations, math.ceil(cfg.lbfgs_iterations * share * scale))
    if iterations < cfg.lbfgs_iterations:
        chosen["quantitative.lbfgs_iterations"] = (
            f"{scale:g} x the job's {cfg.lbfgs_iterations} L-BFGS iterations times the new rows' share "
            f"({share:.0%}), at least {rules.min_child_lbfgs_iterations}")
        cfg.lbfgs_iterations = iterations
    if rules.child_lbfgs_patience < cfg.lbfgs_patience:
        cfg.lbfgs_patience = rules.child_lbfgs_patience
        chosen["quantitative.lbfgs_patience"] = (
            f"{rules.child_lbfgs_patience} validation scores without improvement: from the parent's fit, "
            "a third one changed no child's accuracy")
    cfg.lr *= rules.child_lr_scale
    chosen["quantitative.lr"] = (f"{rules.child_lr_scale:g} x the job's rate: a fresh rate's first Adam "
                                 "steps undo part of the parent's fit, a small one gets little done in the "
                                 "child's few epochs")
    return quantitative_settings(cfg, n_union, chosen, rules)


def baseline_settings(cfg: BaselineConfig, n: int, chosen: dict[str, str] | None = None,
                      rules: Rules = RULES) -> BaselineConfig:
    cfg, chosen = deepcopy(cfg), {} if chosen is None else chosen
    b = _Resolver("baseline", cfg, chosen)
    batch = b.set("batch_size", batch_size(n, rules), _batch_why(n, batch_size(n, rules), rules))
    b.set("lr", rules.lr, "Adam's usual rate")
    b.set("max_epochs", epochs_for(rules.baseline_max_steps, n, batch, 30),
          f"at least 30 epochs and {rules.baseline_max_steps} optimiser steps (at most {EPOCH_CAP} epochs)")
    b.set("patience", epochs_for(rules.patience_steps, n, batch, rules.min_patience_epochs),
          f"at least {rules.min_patience_epochs} epochs and {rules.patience_steps} optimiser steps")
    return cfg


ADAPTED = ("structural", "quantitative", "baseline")


def adapt(config: TrainConfig, n: int, d: int, m: int,
          rules: Rules = RULES) -> tuple[TrainConfig, dict[str, Any]]:
    """The config with every unset field chosen from (N, d, m); values given explicitly are kept.

    ``n`` counts the training rows (after any validation split), ``d`` the input width, ``m`` the classes.
    """
    resolved = deepcopy(config)
    chosen: dict[str, str] = {}
    resolved.structural = structural_settings(config.structural, n, chosen, rules)
    resolved.quantitative = quantitative_settings(config.quantitative, n, chosen, rules)
    resolved.baseline = baseline_settings(config.baseline, n, chosen, rules)
    effective = {
        "data": {"n_train": n, "d": d, "m": m},
        **{name: section_values(getattr(resolved, name)) for name in ADAPTED},
        "chosen": chosen,
    }
    return resolved, effective


ADAPTIVE_MIN_SHARE = 0.5  # adaptive width never goes below half the MLP's parameters


def adaptive_reduction(d: int, hidden: list[int], m: int, n: int) -> tuple[float, str]:
    """``reduction_factor="adaptive"``: size S by the data instead of by parameter matching.

    Parameter matching makes S narrow when d is small (h' = P_mlp / (m (d+1))): 57 units for a 256-wide
    MLP on an 8-feature, 9-class table, too few hyperplanes for the regions such a table needs. The rule
    gives GLAI about one path weight per training target (N m), between half the MLP's parameters and
    the reference widths themselves (r >= 1: S is never wider than the MLP it replaces).
    """
    from glai_core.model import glai_trainable_count, match_parameters, mlp_param_count

    p_mlp = mlp_param_count(d, hidden, m)
    widest = glai_trainable_count(d, hidden, m)
    target = min(widest, max(ADAPTIVE_MIN_SHARE * p_mlp, n * m))
    lo, hi = 1.0, float(max(hidden))
    for _ in range(60):  # the count falls as r grows: bisect on log r
        mid = math.sqrt(lo * hi)
        if glai_trainable_count(d, match_parameters(d, hidden, m, mid).glai_hidden, m) > target:
            lo = mid
        else:
            hi = mid
    r = 1.0 if widest <= target else hi
    why = (f"adaptive: about one path weight per training target (N m = {n * m:,}), between half the MLP's "
           f"{p_mlp:,} parameters and the reference widths ({widest:,}); not parameter-matched")
    return r, why


def section_values(section: StructuralConfig | QuantitativeConfig | BaselineConfig) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in fields(section)}


def unresolved(config: TrainConfig) -> list[str]:
    """Fields still unset (``None``) that ``adapt`` would choose: for messages and tests."""
    out = []
    for name in ("structural", "quantitative", "baseline"):
        section = getattr(config, name)
        out += [f"{name}.{f.name}" for f in fields(section) if getattr(section, f.name) is None
                and f.name in AUTO_FIELDS[name]]
    return out


AUTO_FIELDS = {
    "structural": ("batch_size", "lr", "min_epochs", "max_epochs", "check_interval", "patience"),
    "quantitative": ("batch_size", "epochs", "patience"),
    "baseline": ("batch_size", "lr", "max_epochs", "patience"),
}
