"""The phase-2 cost model: estimated seconds of each solver on a device, and ``auto``'s choice."""

from __future__ import annotations

import math
from dataclasses import dataclass

from glai_core.config import QuantitativeConfig
from glai_core.model import theta_shape


@dataclass(frozen=True)
class RidgeCost:
    """Estimated arithmetic (flops) and memory (bytes) of one closed-form phase 2, per method."""

    method: str
    flops: float
    bytes: float


def ridge_costs(n: int, n_val: int, d: int, hidden: list[int], m: int, n_lambdas: int) -> list[RidgeCost]:
    """Primal: accumulate [F 1]^T [F 1] (N D^2) and factor it per lambda (D^3 / 3). Dual: the N x N kernel
    (N^2 (d + sum h)) and one Cholesky per lambda (N^3 / 3). CG is never cheap (a data pass per iteration)
    and is only the fallback when neither matrix fits in memory."""
    dim = math.prod(theta_shape(d, hidden, m)[1:]) + 1
    width = d + 1 + sum(hidden)
    return [
        RidgeCost("cholesky", n * dim * dim + n_lambdas * dim**3 / 3, 2 * 8 * dim * dim),
        RidgeCost("dual", (n * n + n_val * n) * width + n_lambdas * n**3 / 3 + 4 * n * dim * m,
                  2 * 8 * n * n + 8 * n_val * n),
    ]


def choose_ridge_method(costs: list[RidgeCost], max_bytes: int) -> RidgeCost | None:
    """The cheapest exact method whose matrices fit in ``max_bytes``; None means CG."""
    fitting = [c for c in costs if c.bytes <= max_bytes]
    return min(fitting, key=lambda c: c.flops) if fitting else None



@dataclass(frozen=True)
class DeviceSpeed:
    """What the cost model assumes of a device: sustained float32 GEMM rate on these shapes, and the fixed
    cost of one mini-batch step (kernel launches, optimiser, Python), measured on the benchmark tasks."""

    flops_per_s: float
    step_s: float


DEVICE_SPEEDS = {"cpu": DeviceSpeed(5e10, 3e-4), "cuda": DeviceSpeed(2e13, 4e-5)}
LBFGS_EXPECTED_ITERATIONS = 30  # iterations L-BFGS typically runs before validation stops improving
LBFGS_PASSES_PER_ITERATION = 1.3  # strong-Wolfe line search: function evaluations per iteration
ADAM_EXPECTED_EPOCHS = 10  # Adam's epoch budget when the config leaves it to the data
RIDGE_SHARE = 0.5  # auto runs the exact closed form first when it costs at most this share of the rest
RIDGE_ALWAYS_S = 0.2  # ... or at most this long: a jump to the exact squared-loss optimum is worth it
CHILD_LBFGS_FACTOR = 2.0  # a child refits with L-BFGS while it costs at most this many times Adam


def phase2_seconds(n: int, n_val: int, d: int, hidden: list[int], m: int, cfg: QuantitativeConfig,
                   device: str = "cpu") -> dict[str, float]:
    """Estimated seconds of each phase-2 method on ``device`` (``inf``: the exact ridge does not fit).

    Arithmetic is 2 flops per multiply-add; one pass of the path contraction is 2 N D m flops forward and as
    many for Theta's gradient. Adam pays ``step_s`` per mini-batch step on top; L-BFGS makes few, large
    passes (and a validation score every ``lbfgs_eval_every`` iterations)."""
    speed = DEVICE_SPEEDS.get(device, DEVICE_SPEEDS["cpu"])
    dim = math.prod(theta_shape(d, hidden, m)[1:])
    pass_flops = 4.0 * n * dim * m
    batch = cfg.batch_size or 512
    adam_epoch = pass_flops / speed.flops_per_s + math.ceil(n / batch) * speed.step_s
    iterations = min(cfg.lbfgs_iterations, LBFGS_EXPECTED_ITERATIONS)
    scores = iterations / max(1, cfg.lbfgs_eval_every)
    lbfgs = (iterations * LBFGS_PASSES_PER_ITERATION * pass_flops + n * dim + scores * n_val * dim * m * 2
             ) / speed.flops_per_s + (iterations + scores) * speed.step_s
    exact = choose_ridge_method(ridge_costs(n, n_val, d, hidden, m, len(cfg.ridge_lambdas)),
                                cfg.max_normal_matrix_bytes)
    return {"adam": (cfg.epochs or ADAM_EXPECTED_EPOCHS) * adam_epoch,
            "lbfgs": lbfgs,
            "ridge": float("inf") if exact is None else exact.flops / speed.flops_per_s,
            "ridge_method": "cg" if exact is None else exact.method}  # type: ignore[dict-item]


def choose_phase2(n: int, n_val: int, d: int, hidden: list[int], m: int, cfg: QuantitativeConfig,
                  device: str = "cpu") -> tuple[str, dict[str, float | str]]:
    """Resolve ``solver="auto"`` by estimated time (``phase2_seconds``): the cheaper first-order method
    (full-batch L-BFGS or mini-batch Adam), preceded by the exact closed form when that costs at most
    ``RIDGE_SHARE`` of it or ``RIDGE_ALWAYS_S`` seconds. Returns the solver and the numbers behind it
    (kept in the phase's record)."""
    if cfg.solver != "auto":
        return cfg.solver, {}
    costs = phase2_seconds(n, n_val, d, hidden, m, cfg, device)
    first_order = "lbfgs" if costs["lbfgs"] <= costs["adam"] else "adam"
    solver = first_order
    if costs["ridge"] <= max(RIDGE_SHARE * costs[first_order], RIDGE_ALWAYS_S):
        solver = f"ridge+{first_order}"
    if cfg.epochs == 0 and first_order == "adam" and math.isfinite(costs["ridge"]):
        solver = "ridge"  # no first-order budget at all: the closed form is all there is
    return solver, {"solver": solver, "closed_form": str(costs["ridge_method"]),
                    **{f"estimated_{k}_s": float(v) for k, v in costs.items() if k != "ridge_method"}}


def choose_child_solver(n: int, n_val: int, d: int, hidden: list[int], m: int, cfg: QuantitativeConfig,
                        device: str = "cpu") -> str:
    """Resolve ``solver="auto"`` for a child's phase 2 on the union (``incremental``): the first-order
    method, from the parent's fitted Θ, with no closed form first.

    The child starts near the optimum, where L-BFGS converges in a few iterations, while Adam at a
    fine-tuning rate gets little done in the child's few epochs: on storms (10 seeds, half the rows new)
    an Adam child ended 0.54 pp below a fresh job and an L-BFGS one 0.16 pp, both in under a tenth of the
    fresh job's time. So L-BFGS wins unless it is estimated at more than ``CHILD_LBFGS_FACTOR`` times the
    fresh job's Adam (``phase2_seconds`` on ``cfg``, the fresh settings): on mnist-5k and tweets it is
    2.7x and 3.4x, and there its children were also less accurate (-0.23 and -0.60 pp against -0.19
    and -0.08)."""
    if cfg.solver != "auto":
        return cfg.solver
    costs = phase2_seconds(n, n_val, d, hidden, m, cfg, device)
    return "lbfgs" if costs["lbfgs"] <= CHILD_LBFGS_FACTOR * costs["adam"] else "adam"
