"""Phase-2 solvers: with S frozen the block is linear in (Theta, c), so the fit is convex.

* lbfgs: full-batch L-BFGS on cross-entropy from the warm start (``glai_core.lbfgs``);
* adam: mini-batch Adam on cross-entropy with a small learning rate from the warm start (``train.fit``);
* ridge: least squares on one-hot targets in closed form. One pass accumulates the normal equations
  [F 1]^T [F 1] and [F 1]^T Y in float64 (F: the path features, ``glai_core.paths``), then a Cholesky
  solve per lambda. When neither the primal nor the dual matrix fits ``max_normal_matrix_bytes``,
  Nystrom-preconditioned conjugate gradients solve the same system matrix-free (``glai_core.cg``);
* ridge+lbfgs, ridge+adam: ridge, then the first-order refinement;
* auto (default): the cheapest by estimated seconds on the device (``glai_core.cost_model``).

The exact closed form has two equivalent shapes: the primal (D+1) x (D+1) normal matrix, and the dual
N x N kernel K = (X~ X~^T) * prod_l (G~_l G~_l^T) (elementwise), which never materialises F and is far
cheaper whenever N < D -- the usual case, since parameter matching makes D = P_mlp / m.

Scale. Ridge on one-hot targets gives logits of order 1, while cross-entropy wants sharper ones, so a
temperature T (one scalar, fitted on validation cross-entropy) rescales (Theta, c) after every solve.
Ridge shrinks towards ``alpha * warm start`` (alpha = least-squares scale of the warm logits to the
one-hot targets) rather than towards zero: lambda -> infinity returns the warm start, lambda -> 0 the
plain least-squares fit, and lambda is picked on validation from a small grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glai_core.cg import _Operator, cg_solve
from glai_core.checkpoint import Checkpoint, PhaseState, load_checkpoint, save_checkpoint
from glai_core.config import QuantitativeConfig
from glai_core.cost_model import (
    choose_phase2,
    choose_ridge_method,
    ridge_costs,
)
from glai_core.defaults import quantitative_settings
from glai_core.hooks import Cancelled, Hooks
from glai_core.lbfgs import LbfgsSettings, lbfgs_fit
from glai_core.metrics import evaluate_sums
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.paths import chunk_rows, feature_dim, flat_weights, path_features, unflat_weights
from glai_core.spd import solve_with_factor, spd_solve
from glai_core.train import (
    EVAL_BATCH,
    Best,
    DeviceSet,
    FitResult,
    FitSettings,
    emit,
    evaluate_point,
    finish_phase,
    fit,
)

TRAIN_LOSS_ROWS = 8192  # rows behind the train-loss point of non-epoch steps (start, closed form)


@dataclass
class RidgeSolution:
    theta: Tensor  # block.theta's shape
    bias: Tensor  # (m,)
    lam: float  # absolute lambda used
    relative_lambda: float  # lambda / mean diagonal of F^T F
    temperature: float
    val_accuracy: float
    val_loss: float
    method: str  # "cholesky", "dual" or "cg"


# ------------------------------------------------------------------------------------- features

def normal_equations(block: GLAIBlock, data: DeviceSet) -> tuple[Tensor, Tensor]:
    """G = [F 1]^T [F 1] (D+1, D+1) and B = [F 1]^T Y (D+1, m), float64, one pass over the data."""
    assert data.gates is not None, "phase 2 needs cached gates"
    dim, m = feature_dim(block), block.out_features
    device = data.x.device
    gram = torch.zeros(dim + 1, dim + 1, dtype=torch.float64, device=device)
    rhs = torch.zeros(dim + 1, m, dtype=torch.float64, device=device)
    rows = chunk_rows(dim)
    for start in range(0, len(data), rows):
        part = slice(start, start + rows)
        feats = path_features(data.x[part].double(), data.gates.take(part))
        feats = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], dim=1)
        gram += feats.T @ feats
        rhs += feats.T @ F.one_hot(data.y[part], m).double()
    return gram, rhs


def cholesky_solve(gram: Tensor, rhs: Tensor, lam: float, prior: Tensor | None = None) -> Tensor:
    """argmin ||[F 1] W - Y||^2 + lam ||W_F - prior_F||^2 (the intercept row is not penalised).

    lam is added to the diagonal in place and removed afterwards, so the only extra D x D buffer is the
    Cholesky factor.
    """
    penalty = torch.ones(gram.shape[0], dtype=gram.dtype, device=gram.device)
    penalty[-1] = 0.0
    target = rhs if prior is None else rhs + lam * penalty[:, None] * prior
    scale = float(gram.diagonal().abs().max())
    for jitter in (0.0, 1e-12, 1e-10, 1e-8, 1e-6):
        shift = lam * penalty + jitter * scale
        gram.diagonal().add_(shift)
        try:
            factor, info = torch.linalg.cholesky_ex(gram)
        finally:
            gram.diagonal().sub_(shift)
        if int(info) == 0:
            return solve_with_factor(factor, target)
    raise RuntimeError("normal matrix is not positive definite even with jitter")


# ------------------------------------------------------------------------------ dual (kernel) form

@contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """float32 products without TF32 inside the block, whatever the job's precision set for training."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def path_kernels(xa: Tensor, gates_a: list[Tensor], xb: Tensor, gates_b: list[Tensor]) -> Tensor:
    """(K, Na, Nb) F_a F_b^T of K heads on the same rows (gates (K, N, h_l)), without materialising F.

    Rows of F are Kronecker products (gates x inputs), so their inner products factorise:
    <F_a, F_b> = <x~_a, x~_b> * prod_l <g~_l(a), g~_l(b)>. The input part is one GEMM in the data's dtype
    (float32 in the pipeline), shared by every head; gate counts are exact integers, multiplied into the
    float64 kernel without float64 copies of them. One head scales the input part in place.
    """
    with full_fp32_matmul():  # TF32 would round the inputs to 10 bits: the "exact" solve would not be
        shared = (xa @ xb.T + 1.0).double()
    kernel = shared.unsqueeze(0) if gates_a[0].shape[0] == 1 else None
    last = len(gates_a) - 1
    for level, (ga, gb) in enumerate(zip(gates_a, gates_b, strict=True)):
        counts = torch.bmm(ga.to(xa.dtype), gb.to(xa.dtype).transpose(1, 2))
        if level < last:
            counts += 1.0  # the always-on unit
        if kernel is None:  # several heads: the first level allocates the (K, Na, Nb) result
            kernel = counts.double().mul_(shared)
        else:
            kernel.mul_(counts)
    assert kernel is not None
    return kernel


def path_kernel(xa: Tensor, gates_a: list[Tensor], xb: Tensor, gates_b: list[Tensor]) -> Tensor:
    """F_a F_b^T of one block (gates (N, h_l)), float64: ``path_kernels`` with one head."""
    return path_kernels(xa, [g[None] for g in gates_a], xb, [g[None] for g in gates_b])[0]


def dual_solve(block: GLAIBlock, train: DeviceSet, val: DeviceSet, relative_lambdas: list[float],
               prior: Tensor | None) -> tuple[Tensor, float, float]:
    """The ridge problem of ``cholesky_solve`` in its dual form: (K_c + lam I) alpha = R_c, N x N.

    Exact (same minimiser as the primal) and cheaper whenever N < D, which is the common case for
    parameter-matched blocks (D = P_mlp / m). W = prior + F^T alpha, c = mean(R) - mean(K alpha), with
    R = Y - F prior and K_c the doubly centred kernel (the intercept stays free). Every lambda of the grid
    costs one N x N Cholesky (float32, refined to float64 accuracy: ``spd.spd_solve``) and is scored on
    validation through K_val alpha (temperature included), so only the chosen one pays for F^T alpha.
    Returns (flat W, absolute lambda, relative lambda).
    """
    assert train.gates is not None and val.gates is not None
    op, val_op = _Operator(block, train), _Operator(block, val)
    gates, val_gates = train.gates.take(slice(None)), val.gates.take(slice(None))
    m = block.out_features
    kernel = path_kernel(train.x, gates, train.x, gates)
    val_kernel = path_kernel(val.x, val_gates, train.x, gates)
    scale = float(kernel.diagonal().sum()) / feature_dim(block)  # mean diag(F^T F), as in the primal
    residual = F.one_hot(train.y, m).double()
    val_base = torch.zeros(len(val), m, dtype=torch.float64, device=train.x.device)
    prior_theta = None
    if prior is not None:
        prior_theta = unflat_weights(block, prior, torch.float64)[0]
        residual = residual - torch.cat([op.forward(prior_theta, p) for p in op.parts()])
        val_base = torch.cat([val_op.forward(prior_theta, p) for p in val_op.parts()])
    residual_mean = residual.mean(dim=0)
    row_mean = kernel.mean(dim=0)
    kernel -= row_mean[:, None]  # double centring in place: K_c = H K H
    kernel -= row_mean[None, :]
    kernel += row_mean.mean()
    centred = residual - residual_mean
    best: tuple[float, float, float, Tensor, Tensor] | None = None  # (acc, -loss, relative, alpha, c)
    for relative in relative_lambdas:
        lam = relative * scale
        kernel.diagonal().add_(lam)
        try:
            alpha, ok = spd_solve(kernel, centred)  # sums to zero over rows: 1^T K_c = 0
        finally:
            kernel.diagonal().sub_(lam)
        if not bool(ok):
            continue
        bias = residual_mean - row_mean @ alpha
        out = val_base + val_kernel @ alpha + bias
        scaled = out * fit_temperature(out, val.y)
        loss = float(F.cross_entropy(scaled, val.y))
        acc = float((scaled.argmax(dim=1) == val.y).double().mean())
        if best is None or (acc, -loss) > (best[0], best[1]):
            best = (acc, -loss, relative, alpha, bias)
    if best is None:
        raise RuntimeError("kernel matrix is not positive definite for any lambda of the grid")
    _, _, relative, alpha, bias = best
    del kernel
    theta = sum(op.adjoint(alpha[p], p) for p in op.parts())
    if prior_theta is not None:
        theta = theta + prior_theta
    return flat_weights(block, theta, bias), relative * scale, relative


# ------------------------------------------------------------------------------ scale and choice

@torch.no_grad()
def val_logits(block: GLAIBlock, val: DeviceSet) -> Tensor:
    parts = []
    for start in range(0, len(val), EVAL_BATCH):
        part = slice(start, start + EVAL_BATCH)
        parts.append(block(val.x[part], gates=None if val.gates is None else val.gates.take(part)))
    return torch.cat(parts)


def fit_temperature(out: Tensor, y: Tensor, lo: float = 1e-2, hi: float = 1e3, iters: int = 40) -> float:
    """Scalar T minimising cross-entropy of T * logits (golden-section search on log T)."""
    out = out.double()

    def loss(log_t: float) -> float:
        return float(F.cross_entropy(out * math.exp(log_t), y))

    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return math.exp((a + b) / 2)


def warm_prior(block: GLAIBlock, gram: Tensor | None, rhs: Tensor | None, data: DeviceSet) -> Tensor:
    """alpha * (Theta0, c0) with alpha the least-squares scale of the warm logits to one-hot targets."""
    w0 = flat_weights(block, block.theta.detach(), block.bias.detach())
    if gram is not None and rhs is not None:
        num, den = (w0 * rhs).sum(), (w0 * (gram @ w0)).sum()
    else:
        sums = torch.zeros(2, dtype=torch.float64, device=w0.device)
        with torch.no_grad():
            for start in range(0, len(data), EVAL_BATCH):
                part = slice(start, start + EVAL_BATCH)
                out = block(data.x[part], gates=data.gates.take(part)).double()  # type: ignore[union-attr]
                sums[0] += out.gather(1, data.y[part][:, None]).sum()
                sums[1] += (out * out).sum()
        num, den = sums[0], sums[1]
    return w0 * (num / den.clamp_min(1e-300))


def _apply(block: GLAIBlock, flat: Tensor, scale: float = 1.0) -> None:
    theta, bias = unflat_weights(block, flat * scale)
    with torch.no_grad():
        block.theta.copy_(theta)
        block.bias.copy_(bias)


def _score(block: GLAIBlock, flat: Tensor, val: DeviceSet) -> tuple[float, float, float]:
    """Apply W, fit the temperature on validation; returns (temperature, val_accuracy, val_loss)."""
    _apply(block, flat)
    temperature = fit_temperature(val_logits(block, val), val.y)
    _apply(block, flat, temperature)
    loss, correct, n = evaluate_sums(block, val.x, val.y, EVAL_BATCH, val.gates).tolist()
    return temperature, correct / n, loss / n


def ridge_fit(block: GLAIBlock, train: DeviceSet, val: DeviceSet, relative_lambdas: list[float],
              warm_start: bool = True, max_normal_matrix_bytes: int = 2 * 1024**3,
              cg_max_iter: int = 200, cg_tol: float = 1e-5, method: str | None = None) -> RidgeSolution:
    """Closed-form phase 2; leaves the chosen, temperature-scaled solution in ``block``.

    lambda = relative * mean(diag F^T F). The exact methods (primal Cholesky, dual kernel Cholesky; the
    cheaper one that fits in memory unless ``method`` names one) try every lambda of the grid, sharing
    one matrix; CG uses the middle lambda (each solve costs many data passes).
    """
    if method is None:
        costs = ridge_costs(len(train), len(val), block.in_features, block.hidden, block.out_features,
                            len(relative_lambdas))
        chosen_cost = choose_ridge_method(costs, max_normal_matrix_bytes)
        method = "cg" if chosen_cost is None else chosen_cost.method
    gram = rhs = None
    if method == "cholesky":
        gram, rhs = normal_equations(block, train)
    prior = warm_prior(block, gram, rhs, train) if warm_start else None
    candidates: list[RidgeSolution] = []
    if method == "cg":
        relative = sorted(relative_lambdas)[len(relative_lambdas) // 2]
        flat, lam = cg_solve(block, train, relative, prior, cg_max_iter, cg_tol)
        candidates.append(_candidate(block, flat, lam, relative, val, "cg"))
    elif method == "dual":
        flat, lam, relative = dual_solve(block, train, val, relative_lambdas, prior)
        candidates.append(_candidate(block, flat, lam, relative, val, "dual"))
    else:
        assert gram is not None and rhs is not None
        scale = float(gram.diagonal()[:-1].mean())
        for relative in relative_lambdas:
            flat = cholesky_solve(gram, rhs, relative * scale, prior)
            candidates.append(_candidate(block, flat, relative * scale, relative, val, "cholesky"))
    chosen = max(candidates, key=lambda s: (s.val_accuracy, -s.val_loss))
    with torch.no_grad():
        block.theta.copy_(chosen.theta)
        block.bias.copy_(chosen.bias)
    return chosen


def _candidate(block: GLAIBlock, flat: Tensor, lam: float, relative: float, val: DeviceSet,
               method: str) -> RidgeSolution:
    temperature, acc, loss = _score(block, flat, val)
    return RidgeSolution(theta=block.theta.detach().clone(), bias=block.bias.detach().clone(), lam=lam,
                         relative_lambda=relative, temperature=temperature, val_accuracy=acc, val_loss=loss,
                         method=method)


# ------------------------------------------------------------------------------ the phase

PHASE = "quantitative"


def quantitative_phase(block: GLAIBlock, train: DeviceSet, val: DeviceSet, cfg: QuantitativeConfig,
                       hooks: Hooks, checkpoint: Path | None = None, seed: int = 0,
                       autocast: torch.dtype | None = None) -> FitResult:
    """Phase 2 with frozen gates; the result is never worse on validation than the starting block.

    Steps: 0 = the starting point (warm start from S, or zeros), 1 = the ridge solve (ridge solvers),
    then one step per Adam epoch. Gates are computed once per sample and cached for the whole phase.
    """
    ckpt = load_checkpoint(checkpoint)
    if ckpt is not None and ckpt.state.finished:
        block.load_state_dict(ckpt.group("model"))
        s = ckpt.state
        return FitResult(block, s.history, s.best_step, s.best_accuracy, s.stopped_by or "max_epochs",
                         s.seconds, resumed=True, skipped=True, extra=s.extra)
    started = time.monotonic()
    cfg = quantitative_settings(cfg, len(train))  # unset fields from the data (a no-op after adapt)
    train, val = train.with_gates(block.structure), val.with_gates(block.structure)
    solver, decision = choose_phase2(len(train), len(val), block.in_features, block.hidden,
                                     block.out_features, cfg, train.x.device.type)
    if ckpt is not None and "auto" in ckpt.state.extra:
        solver = str(ckpt.state.extra["auto"]["solver"])  # a resumed phase keeps its first decision
    offset = 1 if solver.startswith("ridge") else 0
    settings = FitSettings(epochs=offset + cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                           patience=cfg.patience, seed=seed + 2, schedule=cfg.schedule, first_step=offset,
                           autocast=autocast, backtrack=cfg.backtrack)
    state, best = PhaseState(), Best()
    if decision:
        state.extra["auto"] = decision
    state.extra["solver"] = solver
    lbfgs_steps = math.ceil(cfg.lbfgs_iterations / max(1, cfg.lbfgs_eval_every))
    total = offset + (lbfgs_steps if solver.endswith("lbfgs") else cfg.epochs)
    if ckpt is None:
        hooks.on_phase_start(PHASE)
        _record(block, train, val, state, best, hooks, 0, total, started, {})
        if offset:
            solution = ridge_fit(block, train, val, cfg.ridge_lambdas, cfg.warm_start,
                                 cfg.max_normal_matrix_bytes, cfg.cg_max_iter, cfg.cg_tol)
            info = {"ridge_lambda": solution.relative_lambda, "temperature": solution.temperature}
            state.extra["ridge"] = {k: v for k, v in asdict(solution).items() if not isinstance(v, Tensor)}
            _record(block, train, val, state, best, hooks, 1, total, started, info)
        if solver == "ridge" or (cfg.epochs == 0 and solver.endswith("adam")):
            if best.weights is not None:
                block.load_state_dict(best.weights)
            finish_phase(checkpoint, block, state, "solved")
            return FitResult(block, state.history, best.step, best.accuracy, "solved", state.seconds,
                             extra=state.extra)
    if solver.endswith("lbfgs"):
        return _lbfgs_phase(block, train, val, cfg, hooks, checkpoint, ckpt, state, best, started, total)
    rank = subspace_rank(block.in_features, cfg) if solver == "adam" else 0
    if rank:
        return _subspace_phase(block, train, val, settings, hooks, checkpoint, ckpt is not None, state, best,
                               rank, started)
    if ckpt is None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, block, None, best.weights)
        if hooks.should_stop():
            raise Cancelled(f"{PHASE} stopped after step {state.step}")
    return fit(block, train, val, settings, hooks, PHASE, checkpoint=checkpoint, state=state, best=best,
               announce=ckpt is not None)


def _lbfgs_phase(block: GLAIBlock, train: DeviceSet, val: DeviceSet, cfg: QuantitativeConfig, hooks: Hooks,
                 checkpoint: Path | None, ckpt: Checkpoint | None, state: PhaseState, best: Best,
                 started: float, total: int) -> FitResult:
    """Full-batch L-BFGS (``glai_core.lbfgs``) from the best point so far (warm start or closed form).

    One step per validation score. A resumed phase continues from its checkpoint's weights with a fresh
    curvature memory; its best point and curve come back with it.
    """
    if ckpt is not None:
        block.load_state_dict(ckpt.group("model"))
        state = ckpt.state
        weights = ckpt.group("best")
        best = Best(state.best_step, state.best_accuracy, state.best_loss,
                    {k: v.to(block.theta.device) for k, v in weights.items()} or None)
        started = time.monotonic() - state.seconds
        hooks.on_phase_start(PHASE)
    elif best.weights is not None:
        block.load_state_dict(best.weights)
    settings = LbfgsSettings(max_iterations=cfg.lbfgs_iterations, eval_every=cfg.lbfgs_eval_every,
                             patience=cfg.lbfgs_patience, max_feature_bytes=cfg.max_feature_bytes)
    last_saved = [time.monotonic()]

    def score(iterations: int) -> bool:
        before = min(best.loss, min((h["val_loss"] for h in state.history), default=float("inf")))
        metrics = evaluate_point(block, None, val)
        improved = best.improves(metrics["val_accuracy"], metrics["val_loss"]) or metrics["val_loss"] < before
        if best.improves(metrics["val_accuracy"], metrics["val_loss"]):
            best.take(block, state.step + 1, metrics["val_accuracy"], metrics["val_loss"])
        state.step, state.seconds = state.step + 1, time.monotonic() - started
        state.best_step, state.best_accuracy, state.best_loss = best.step, best.accuracy, best.loss
        state.history.append({"step": state.step, "seconds": state.seconds, "lbfgs_iterations": iterations,
                              **metrics})
        if checkpoint is not None and time.monotonic() - last_saved[0] >= hooks.checkpoint_interval_s:
            save_checkpoint(checkpoint, state, block, None, best.weights)
            last_saved[0] = time.monotonic()
        emit(hooks, PHASE, state.step, total, metrics, state.seconds)
        return improved

    report = lbfgs_fit(block, train, settings, score, hooks.should_stop)
    state.extra["lbfgs"] = asdict(report)
    if report.stopped_by == "stopped":
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, block, None, best.weights)
        raise Cancelled(f"{PHASE} stopped after step {state.step}")
    if best.weights is not None:
        block.load_state_dict(best.weights)
    state.seconds = time.monotonic() - started
    finish_phase(checkpoint, block, state, report.stopped_by)
    return FitResult(block, state.history, best.step, best.accuracy, report.stopped_by, state.seconds,
                     resumed=ckpt is not None, extra=state.extra)


# ------------------------------------------------------------------------------ input-subspace phase 2

def subspace_rank(d: int, cfg: QuantitativeConfig) -> int:
    """Rank of the input subspace for first-order phase 2; 0 = the full input space."""
    rank = cfg.input_rank
    return rank if rank and 2 * rank <= d else 0


def input_basis(x: Tensor, rank: int, rows: int = 4096, seed: int = 0) -> Tensor:
    """(d, rank) orthonormal top principal directions of the (standardised) inputs, from a seeded
    subsample: the covariance of ``rows`` rows and one symmetric eigendecomposition."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(x.shape[0], generator=generator)[:rows].to(x.device)
    sample = x[index].double()
    sample = sample - sample.mean(dim=0)
    _, vectors = torch.linalg.eigh(sample.T @ sample)
    return vectors[:, -rank:].flip(1).to(x.dtype).contiguous()


class SubspaceCorrection(nn.Module):
    """Phase 2 restricted to an input subspace: y = y_warm(x) + sum_j g_j(x) (B_j [x P; 1]).

    Theta's update along the input axis is confined to span(P) (plus the free bias column), so an epoch
    contracts rank + 1 inputs instead of d + 1: for 1280-d frozen features and rank 128 a tenth of the
    arithmetic. The warm logits are computed once per sample and travel with the inputs
    (``x_packed = [x P, y_warm]``). ``fold`` writes Theta_0 + B P^T back into the block: the same function.
    """

    def __init__(self, block: GLAIBlock, basis: Tensor) -> None:
        super().__init__()
        self.rank = basis.shape[1]
        shape_only = StructuralMLP(self.rank, block.hidden, block.out_features)  # gates always come cached
        self.inner = GLAIBlock(shape_only).to(device=block.theta.device, dtype=block.theta.dtype)
        self.register_buffer("basis", basis)

    def forward(self, packed: Tensor, gates: list[Tensor] | None = None) -> Tensor:
        assert gates is not None, "the subspace correction needs cached gates"
        return self.inner(packed[:, :self.rank], gates=gates) + packed[:, self.rank:]

    @torch.no_grad()
    def fold(self, block: GLAIBlock) -> None:
        correction = self.inner.effective_theta()
        block.theta[..., :-1] += correction[..., :-1] @ self.basis.T
        block.theta[..., -1] += correction[..., -1]
        block.bias += self.inner.bias


@torch.no_grad()
def _packed(block: GLAIBlock, data: DeviceSet, basis: Tensor) -> DeviceSet:
    warm = torch.cat([block(data.x[p], gates=data.gates.take(p))  # type: ignore[union-attr]
                      for p in (slice(s, s + EVAL_BATCH) for s in range(0, len(data), EVAL_BATCH))])
    return DeviceSet(torch.cat([data.x @ basis, warm], dim=1), data.y, data.gates)


def _subspace_phase(block: GLAIBlock, train: DeviceSet, val: DeviceSet, settings: FitSettings, hooks: Hooks,
                    checkpoint: Path | None, resumed: bool, state: PhaseState, best: Best, rank: int,
                    started: float) -> FitResult:
    """First-order phase 2 in the input subspace, then folded into ``block``.

    The start (step 0) is the warm block itself (B = 0). The basis and warm logits are recomputed
    deterministically on resume, so the checkpoint holds only the correction; the finished checkpoint
    holds the folded block, like every other solver's.
    """
    basis = input_basis(train.x, rank, seed=settings.seed)
    correction = SubspaceCorrection(block, basis)
    sub_train, sub_val = _packed(block, train, basis), _packed(block, val, basis)
    sub_best = Best()
    if not resumed:
        sub_best.take(correction, 0, best.accuracy, best.loss)
        state.seconds = time.monotonic() - started
        state.extra["subspace_rank"] = rank
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, correction, None, sub_best.weights)
        if hooks.should_stop():
            raise Cancelled(f"{PHASE} stopped after step {state.step}")
    result = fit(correction, sub_train, sub_val, settings, hooks, PHASE, checkpoint=checkpoint, state=state,
                 best=sub_best, announce=resumed)
    correction.fold(block)
    finish_phase(checkpoint, block, state, result.stopped_by)
    result.model = block
    return result


def _record(block: GLAIBlock, train: DeviceSet, val: DeviceSet, state: PhaseState, best: Best, hooks: Hooks,
            step: int, total: int, started: float, info: dict[str, float]) -> None:
    """Evaluate a non-epoch step (start point, closed-form solve), keep it if best, report it.

    Its train loss is measured on the first ``TRAIN_LOSS_ROWS`` rows only: a full pass would cost a third
    of an epoch, on the clock of time to target, for a curve point.
    """
    head = DeviceSet(train.x[:TRAIN_LOSS_ROWS], train.y[:TRAIN_LOSS_ROWS],
                     None if train.gates is None else train.gates.head(TRAIN_LOSS_ROWS))
    metrics = {**evaluate_point(block, head, val), **info}
    if best.improves(metrics["val_accuracy"], metrics["val_loss"]):
        best.take(block, step, metrics["val_accuracy"], metrics["val_loss"])
    state.step, state.seconds = step, time.monotonic() - started
    state.best_step, state.best_accuracy, state.best_loss = best.step, best.accuracy, best.loss
    state.history.append({"step": step, "seconds": state.seconds, **metrics})
    emit(hooks, PHASE, step, total, metrics, state.seconds)
