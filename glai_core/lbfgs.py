"""Phase 2 by full-batch L-BFGS on cross-entropy: the convex problem solved in a few dozen passes.

With S frozen the block is linear in (Theta, c): logits = F W + c, where the rows of F are the path
features of ``solvers.path_features``. Cross-entropy is convex in (W, c), so a quasi-Newton method on the
whole training split converges in tens of iterations where Adam needs hundreds of mini-batch steps, each
paying the per-step cost that dominates small heads. This is the solver family of the convex gated-ReLU
literature (Mishkin, Sahiner and Pilanci 2022) applied to the warm-started path model.

* When N x D floats fit in ``max_feature_bytes`` the explicit feature matrix F is built once and every
  pass is two GEMMs; otherwise each pass runs the block's own contraction chunk by chunk.
* The only regulariser is early stopping: every ``eval_every`` iterations the block is scored on the
  validation split and the best point is kept (the warm start and any closed-form point included), so
  the phase never ends below its start; ``patience`` scores without improvement end it.
* Strong-Wolfe line search (torch's L-BFGS), so no learning rate is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from glai_core.model import GLAIBlock
from glai_core.train import EVAL_BATCH, DeviceSet

FEATURE_CHUNK = 65536


@dataclass(frozen=True)
class LbfgsSettings:
    max_iterations: int = 100
    eval_every: int = 5  # iterations between two validation scores (one curve point each)
    patience: int = 3  # scores without improvement before stopping
    history_size: int = 20
    max_feature_bytes: int = 512 * 1024**2  # explicit F up to this size, else the block's contraction


def explicit_features(block: GLAIBlock, data: DeviceSet, max_bytes: int) -> Tensor | None:
    """F (N, D) in float32 when it fits in ``max_bytes``, built chunk by chunk from the cached gates."""
    from glai_core.paths import feature_dim, path_features

    assert data.gates is not None, "L-BFGS phase 2 needs cached gates"
    dim = feature_dim(block)
    if len(data) * dim * 4 > max_bytes:
        return None
    parts = []
    for start in range(0, len(data), FEATURE_CHUNK):
        part = slice(start, start + FEATURE_CHUNK)
        parts.append(path_features(data.x[part], data.gates.take(part)))
    return torch.cat(parts)


class _Objective:
    """Mean cross-entropy of the block on the training split and its gradient, for L-BFGS's closure."""

    def __init__(self, block: GLAIBlock, data: DeviceSet, features: Tensor | None) -> None:
        self.block, self.data, self.features = block, data, features
        self.passes = 0

    def logits(self, part: slice) -> Tensor:
        if self.features is not None:
            m = self.block.out_features
            weights = self.block.effective_theta().reshape(m, -1)
            return torch.addmm(self.block.bias, self.features[part], weights.T)
        return self.block(self.data.x[part], gates=self.data.gates.take(part))  # type: ignore[union-attr]

    def __call__(self) -> Tensor:
        self.passes += 1
        self.block.zero_grad(set_to_none=False)
        n = len(self.data)
        total = torch.zeros((), dtype=torch.float64, device=self.data.y.device)
        chunk = n if self.features is not None else EVAL_BATCH
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            loss = F.cross_entropy(self.logits(part), self.data.y[part], reduction="sum") / n
            loss.backward()
            total += loss.detach().double()
        return total


@dataclass
class LbfgsReport:
    iterations: int
    passes: int
    stopped_by: str  # "patience", "converged" or "max_iterations"
    explicit_features: bool


def lbfgs_fit(block: GLAIBlock, train: DeviceSet, settings: LbfgsSettings,
              score: Callable[[int], bool], should_stop: Callable[[], bool] = lambda: False) -> LbfgsReport:
    """Minimise training cross-entropy over (Theta, c) from the block's current weights.

    ``score(iteration)`` is called every ``settings.eval_every`` iterations; it evaluates and keeps the
    best point and returns whether this one improved. The caller restores the best point afterwards.
    """
    features = explicit_features(block, train, settings.max_feature_bytes)
    objective = _Objective(block, train, features)
    params = [block.theta, block.bias]
    # max_eval bounds the line search's function evaluations per step() call (torch's default, 1.25 per
    # iteration, cuts a round short): generous, so a round makes its ``eval_every`` iterations.
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=settings.eval_every,
                                  max_eval=4 * settings.eval_every, history_size=settings.history_size,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
    done, stale, stopped_by = 0, 0, "max_iterations"
    rounds = math.ceil(settings.max_iterations / settings.eval_every)
    previous = float("inf")
    with torch.enable_grad():
        for _ in range(rounds):
            before = optimizer.state[optimizer._params[0]].get("n_iter", 0)
            optimizer.step(objective)
            after = optimizer.state[optimizer._params[0]]["n_iter"]
            done += after - before
            state = optimizer.state[optimizer._params[0]]
            loss = float(state.get("prev_loss", previous))  # the loss at the start of the last iteration
            improved = score(done)
            stale = 0 if improved else stale + 1
            if after == before or previous - loss <= 1e-9 * max(1.0, abs(loss)):
                stopped_by = "converged"
                break
            previous = loss
            if stale >= settings.patience:
                stopped_by = "patience"
                break
            if should_stop():
                stopped_by = "stopped"
                break
    block.zero_grad(set_to_none=True)
    return LbfgsReport(done, objective.passes, stopped_by, features is not None)
