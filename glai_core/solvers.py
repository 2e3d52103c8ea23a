"""Phase-2 solvers: with S frozen the block is linear in (Theta, c), so the fit is convex.

* first order: Adam on cross-entropy with a small learning rate from the warm start (``train.fit``);
* ridge: least squares on one-hot targets in closed form. One pass accumulates the normal equations
  [F 1]^T [F 1] and [F 1]^T Y in float64 (F[b] = g_L(b) x g~_{L-1}(b) x ... x g~_1(b) x x~(b), the
  row of Theta[k] that multiplies sample b), then a Cholesky solve per lambda. When the normal matrix
  would exceed ``max_normal_matrix_bytes`` a matrix-free, Jacobi-preconditioned conjugate gradient
  solves the same system, applying F and F^T through the block's own forward (and its autograd);
* ridge+adam: ridge, then a short Adam refinement;
* auto (default): ridge+adam when the cheapest exact closed form costs at most a few Adam epochs
  (``choose_phase2``: arithmetic of the primal N D^2 + D^3/3 or dual N^2 (d + sum h) + N^3/3 solve against
  one epoch's 4 N D m plus per-step overhead), else Adam alone from the warm start on cached gates.

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
from torch.func import functional_call

from glai_core.checkpoint import Checkpoint, PhaseState, load_checkpoint, save_checkpoint
from glai_core.config import QuantitativeConfig
from glai_core.defaults import quantitative_settings
from glai_core.hooks import Cancelled, Hooks
from glai_core.lbfgs import LbfgsSettings, lbfgs_fit
from glai_core.metrics import evaluate_sums
from glai_core.model import GLAIBlock, StructuralMLP, theta_shape
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

CHUNK_BYTES = 256 * 1024**2  # working memory for one chunk of explicit features
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

def path_features(x: Tensor, gates: list[Tensor]) -> Tensor:
    """Explicit rows of F for a chunk: (b, prod(theta.shape[1:])), ordered like Theta[k].flatten()."""
    feats = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
    for level, gate in enumerate(gates):
        g = gate.to(feats.dtype)
        if level < len(gates) - 1:
            g = torch.cat([g, g.new_ones(g.shape[0], 1)], dim=1)
        feats = (g[:, :, None] * feats[:, None, :]).reshape(x.shape[0], -1)
    return feats


def feature_dim(block: GLAIBlock) -> int:
    return math.prod(block.theta.shape[1:])


def _chunk_rows(dim: int) -> int:
    return max(1, min(65536, CHUNK_BYTES // (8 * (dim + 1))))


def normal_equations(block: GLAIBlock, data: DeviceSet) -> tuple[Tensor, Tensor]:
    """G = [F 1]^T [F 1] (D+1, D+1) and B = [F 1]^T Y (D+1, m), float64, one pass over the data."""
    assert data.gates is not None, "phase 2 needs cached gates"
    dim, m = feature_dim(block), block.out_features
    device = data.x.device
    gram = torch.zeros(dim + 1, dim + 1, dtype=torch.float64, device=device)
    rhs = torch.zeros(dim + 1, m, dtype=torch.float64, device=device)
    rows = _chunk_rows(dim)
    for start in range(0, len(data), rows):
        part = slice(start, start + rows)
        feats = path_features(data.x[part].double(), data.gates.take(part))
        feats = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], dim=1)
        gram += feats.T @ feats
        rhs += feats.T @ F.one_hot(data.y[part], m).double()
    return gram, rhs


def _flat(block: GLAIBlock, theta: Tensor, bias: Tensor) -> Tensor:
    """(Theta, c) -> (D+1, m) float64 column-per-output layout of the normal equations."""
    m = block.out_features
    return torch.cat([theta.reshape(m, -1).T, bias[None, :]], dim=0).double()


def _unflat(block: GLAIBlock, flat: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    dtype = dtype or block.theta.dtype
    theta = flat[:-1].T.reshape(block.theta.shape).to(dtype)
    return theta.contiguous(), flat[-1].to(dtype).contiguous()


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
            return torch.cholesky_solve(target, factor)
    raise RuntimeError("normal matrix is not positive definite even with jitter")


# ------------------------------------------------------------------------------ matrix-free CG

class _Operator:
    """W -> F W and R -> F^T R over the whole split, chunk by chunk, through the block's own contraction
    (forward via ``functional_call``, adjoint via autograd), in float64."""

    def __init__(self, block: GLAIBlock, data: DeviceSet, chunk: int = EVAL_BATCH) -> None:
        assert data.gates is not None
        self.block, self.data, self.chunk = block, data, chunk
        self.zero_bias = torch.zeros(block.out_features, dtype=torch.float64, device=data.x.device)

    def parts(self) -> list[slice]:
        return [slice(s, s + self.chunk) for s in range(0, len(self.data), self.chunk)]

    def forward(self, theta: Tensor, part: slice, square: bool = False) -> Tensor:
        x = self.data.x[part].double()
        gates = self.data.gates.take(part)  # type: ignore[union-attr]
        return functional_call(self.block, {"theta": theta, "bias": self.zero_bias},
                               (x * x if square else x,), {"gates": gates})

    def adjoint(self, residual: Tensor, part: slice, square: bool = False) -> Tensor:
        """F^T R for one chunk (theta-shaped); F is linear, so the point of linearisation is irrelevant."""
        with torch.enable_grad():
            theta = torch.zeros(self.block.theta.shape, dtype=torch.float64, device=residual.device,
                                requires_grad=True)
            (grad,) = torch.autograd.grad(self.forward(theta, part, square), theta, residual.double())
        return grad


class _CenteredNormal:
    """(F_c^T F_c + lam I) for centred features F_c = F - 1 mu^T, never materialised.

    Centring removes the unpenalised intercept from the iteration (it is recovered afterwards as
    c = mean(Y) - mu^T W); left in, it makes the system far worse conditioned and CG crawl.
    """

    def __init__(self, block: GLAIBlock, data: DeviceSet) -> None:
        self.op, self.block, self.n = _Operator(block, data), block, len(data)
        m = block.out_features
        ones = [data.x.new_ones(min(p.stop, self.n) - p.start, m, dtype=torch.float64)
                for p in self.op.parts()]
        self.mu = self._sum(lambda i, p: self.op.adjoint(ones[i], p)) / self.n
        # diag(F^T F) = F^T 1 evaluated at x^2, since the gates are 0/1
        squares = self._sum(lambda i, p: self.op.adjoint(ones[i], p, square=True))
        self.diag = squares - self.n * self.mu * self.mu

    def _sum(self, term) -> Tensor:  # noqa: ANN001
        parts = self.op.parts()
        total = term(0, parts[0])
        for i, p in enumerate(parts[1:], start=1):
            total = total + term(i, p)
        return total

    def rhs(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """F_c^T Y and mean(Y) for one-hot targets."""
        m = self.block.out_features
        total = self._sum(lambda _, p: self.op.adjoint(F.one_hot(y[p], m).double(), p))
        y_mean = F.one_hot(y, m).double().mean(dim=0)
        return total - self.n * self.mu * y_mean.view(m, *([1] * (self.mu.dim() - 1))), y_mean

    def apply(self, w: Tensor, lam: float) -> Tensor:
        shift = (self.mu * w).flatten(1).sum(dim=1)  # mu^T W per output
        out = torch.zeros_like(w)
        for p in self.op.parts():
            centred = self.op.forward(w, p) - shift
            out += self.op.adjoint(centred, p)
        return out + lam * w


def unit_grams(block: GLAIBlock, data: DeviceSet, mu: Tensor) -> Tensor:
    """The diagonal blocks of the centred F^T F, one (d+1) x (d+1) block per path prefix J = (j_L..j_1):
    sum_b w_bJ x~_b x~_b^T - N mu_J mu_J^T, with w_bJ the product of the gates along J. One pass,
    F^T X~ chunk by chunk (N D (d+1) flops, D (d+1) floats)."""
    assert data.gates is not None
    width = block.in_features + 1
    dim = feature_dim(block)
    grams = torch.zeros(dim, width, dtype=torch.float64, device=data.x.device)
    rows = _chunk_rows(dim)
    for start in range(0, len(data), rows):
        part = slice(start, start + rows)
        x = data.x[part].double()
        inputs = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        grams += path_features(x, data.gates.take(part)).T @ inputs
    grams = grams.view(dim // width, width, width)
    prefix_mu = mu[0].reshape(dim // width, width)
    return grams - len(data) * prefix_mu[:, :, None] * prefix_mu[:, None, :]


class _BlockJacobi:
    """z = blockdiag(B_J + lam I)^-1 r: per-prefix Cholesky factors of the centred unit Grams. For one
    hidden layer the blocks are the per-unit Grams X~^T diag(g_j) X~; they capture the input correlations
    that plain Jacobi ignores, which is what slows CG on standardised but correlated features."""

    def __init__(self, grams: Tensor, lam: float) -> None:
        eye = torch.eye(grams.shape[-1], dtype=grams.dtype, device=grams.device)
        scale = grams.diagonal(dim1=1, dim2=2).abs().amax().clamp_min(1e-300)
        for jitter in (0.0, 1e-10, 1e-8, 1e-6):
            factor, info = torch.linalg.cholesky_ex(grams + (lam + jitter * scale) * eye)
            if int(info.max()) == 0:
                break
        self.factor = factor

    def __call__(self, r: Tensor) -> Tensor:
        m, width = r.shape[0], r.shape[-1]
        blocks = r.reshape(m, -1, width).permute(1, 2, 0)  # (prefixes, d+1, m)
        z = torch.cholesky_solve(blocks, self.factor)
        return z.permute(2, 0, 1).reshape(r.shape)


NYSTROM_RANK = 100


class _Nystrom:
    """Randomised Nystrom preconditioner (Frangella, Tropp and Udell 2023; CRONOS uses it for convex
    two-layer nets): a rank-r sketch U diag(s) U^T of the centred F^T F from r products with it, then
    P^-1 r = (s_r + lam) U (s + lam)^-1 U^T r + (r - U U^T r). It removes the few large eigenvalues that
    the shared inputs x~ of every active unit create, which is what slows plain CG on these systems."""

    def __init__(self, system: _CenteredNormal, rank: int, lam: float, seed: int = 0) -> None:
        shape = system.mu.shape[1:]
        dim = math.prod(shape)
        rank = max(1, min(rank, dim))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        omega = torch.randn(dim, rank, generator=generator, dtype=torch.float64).to(system.mu.device)
        omega, _ = torch.linalg.qr(omega)
        sketch = torch.cat([self._apply(system, omega[:, i:i + system.mu.shape[0]], shape)
                            for i in range(0, rank, system.mu.shape[0])], dim=1)
        shift = 1e-10 * float(sketch.norm())  # keeps the small Cholesky stable
        sketch = sketch + shift * omega
        core = torch.linalg.cholesky(omega.T @ sketch + 1e-14 * torch.eye(rank, dtype=sketch.dtype,
                                                                           device=sketch.device))
        factor = torch.linalg.solve_triangular(core, sketch.T, upper=False).T  # sketch @ core^-T
        u, sigma, _ = torch.linalg.svd(factor, full_matrices=False)
        self.u = u
        self.values = (sigma**2 - shift).clamp_min(0.0)
        self.lam = lam
        self.shape = shape

    @staticmethod
    def _apply(system: _CenteredNormal, columns: Tensor, shape: torch.Size) -> Tensor:
        """Centred F^T F times up to m columns at once (the operator works in groups of m outputs)."""
        m = system.mu.shape[0]
        used = columns.shape[1]
        padded = torch.zeros(columns.shape[0], m, dtype=columns.dtype, device=columns.device)
        padded[:, :used] = columns
        w = padded.T.reshape(m, *shape)
        return system.apply(w, 0.0).reshape(m, -1).T[:, :used]

    def __call__(self, r: Tensor) -> Tensor:
        flat = r.reshape(r.shape[0], -1).T  # (D, m)
        projected = self.u.T @ flat
        scale = (self.values[-1] + self.lam) / (self.values + self.lam)
        out = self.u @ (scale[:, None] * projected) + flat - self.u @ projected
        return out.T.reshape(r.shape)


def cg_solve(block: GLAIBlock, data: DeviceSet, relative_lambda: float, prior: Tensor | None,
             max_iter: int = 200, tol: float = 1e-5, preconditioner: str = "auto",
             max_block_bytes: int = 2 * 1024**3, info: dict | None = None) -> tuple[Tensor, float]:
    """Preconditioned CG on the centred normal equations, all m outputs at once.

    Solves the same problem as ``cholesky_solve`` (ridge on Theta towards ``prior``, free intercept)
    and returns the same (D+1, m) layout; lambda = relative * mean diag(F^T F). ``preconditioner``:
    ``nystrom`` (a rank-100 randomised sketch, ``_Nystrom``; on digits 5-7x fewer iterations than
    Jacobi), ``block`` (block-Jacobi on the per-prefix input Grams, ``unit_grams``: 10-20% fewer, when
    its D (d+1) floats fit in ``max_block_bytes``), ``jacobi`` (the diagonal); ``auto`` is nystrom.
    ``info`` receives the iterations and the preconditioner used.
    """
    assert data.gates is not None
    system = _CenteredNormal(block, data)
    m = block.out_features
    lam = relative_lambda * float((system.diag + system.n * system.mu**2).mean())
    rhs, y_mean = system.rhs(data.y)
    w = torch.zeros_like(rhs)
    if prior is not None:
        w0 = prior[:-1].T.reshape(rhs.shape)
        rhs, w = rhs + lam * w0, w0.clone()
    if preconditioner == "auto":
        preconditioner = "nystrom"
    if preconditioner == "block" and 8 * feature_dim(block) * (block.in_features + 1) > max_block_bytes:
        preconditioner = "jacobi"
    if preconditioner == "block":
        precond = _BlockJacobi(unit_grams(block, data, system.mu), lam)
    elif preconditioner == "nystrom":
        precond = _Nystrom(system, NYSTROM_RANK, lam)
    else:
        inverse = 1.0 / (system.diag + lam).clamp_min(1e-12)

        def precond(r: Tensor) -> Tensor:
            return inverse * r
    r = rhs - system.apply(w, lam)
    z = precond(r)
    p = z.clone()

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).flatten(1).sum(dim=1).view(m, *([1] * (a.dim() - 1)))

    rz = dot(r, z)
    rhs_norm = dot(rhs, rhs).sqrt().clamp_min(1e-300)
    iterations = 0
    for iterations in range(max_iter + 1):  # noqa: B007 -- the count is reported
        if iterations == max_iter or bool((dot(r, r).sqrt() / rhs_norm < tol).all()):
            break
        ap = system.apply(p, lam)
        alpha = rz / dot(p, ap).clamp_min(1e-300)
        w = w + alpha * p
        r = r - alpha * ap
        z = precond(r)
        rz_new = dot(r, z)
        p = z + (rz_new / rz.clamp_min(1e-300)) * p
        rz = rz_new
    if info is not None:
        info.update({"iterations": iterations, "preconditioner": preconditioner})
    bias = y_mean - (system.mu * w).flatten(1).sum(dim=1)
    return _flat(block, w, bias), lam


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


def path_kernel(xa: Tensor, gates_a: list[Tensor], xb: Tensor, gates_b: list[Tensor]) -> Tensor:
    """F_a F_b^T without materialising F: <F_a, F_b> = <x~_a, x~_b> * prod_l <g~_l(a), g~_l(b)>.

    Rows of F are Kronecker products (gates x inputs), so their inner products factorise. The input part
    is computed in the data's dtype (float32 in the pipeline: one GEMM), gate counts are exact integers,
    and the product is returned in float64 for the solve.
    """
    with full_fp32_matmul():  # TF32 would round the inputs to 10 bits: the "exact" solve would not be
        kernel = (xa @ xb.T + 1.0).double()
    last = len(gates_a) - 1
    for level, (ga, gb) in enumerate(zip(gates_a, gates_b, strict=True)):
        shared = ga.to(xa.dtype) @ gb.to(xa.dtype).T
        if level < last:
            shared = shared + 1.0  # the always-on unit
        kernel *= shared.double()
    return kernel


def dual_solve(block: GLAIBlock, train: DeviceSet, val: DeviceSet, relative_lambdas: list[float],
               prior: Tensor | None) -> tuple[Tensor, float, float]:
    """The ridge problem of ``cholesky_solve`` in its dual form: (K_c + lam I) alpha = R_c, N x N.

    Exact (same minimiser as the primal) and cheaper whenever N < D, which is the common case for
    parameter-matched blocks (D = P_mlp / m). W = prior + F^T alpha, c = mean(R) - mean(K alpha), with
    R = Y - F prior and K_c the doubly centred kernel (the intercept stays free). Every lambda of the grid
    costs one N x N Cholesky and is scored on validation through K_val alpha (temperature included), so
    only the chosen one pays for F^T alpha. Returns (flat W, absolute lambda, relative lambda).
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
        prior_theta = _unflat(block, prior, torch.float64)[0]
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
            factor, info = torch.linalg.cholesky_ex(kernel)
        finally:
            kernel.diagonal().sub_(lam)
        if int(info) != 0:
            continue
        alpha = torch.cholesky_solve(centred, factor)  # sums to zero over rows: 1^T K_c = 0
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
    return _flat(block, theta, bias), relative * scale, relative


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
    w0 = _flat(block, block.theta.detach(), block.bias.detach())
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
    theta, bias = _unflat(block, flat * scale)
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


# ------------------------------------------------------------------------------ the choice

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
