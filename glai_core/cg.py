"""Matrix-free conjugate gradients for the ridge system, with Nystrom or block-Jacobi preconditioning.

The fallback of the closed-form phase 2 when neither the primal D x D nor the dual N x N matrix fits in
memory: F and F^T are applied through the block's own contraction (forward via ``functional_call``,
adjoint via autograd), chunk by chunk, in float64, on centred features so the free intercept drops out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from glai_core.model import GLAIBlock
from glai_core.paths import chunk_rows, feature_dim, flat_weights, path_features
from glai_core.spd import solve_with_factor
from glai_core.train import EVAL_BATCH, DeviceSet


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
    rows = chunk_rows(dim)
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
        z = solve_with_factor(self.factor, blocks)
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
    return flat_weights(block, w, bias), lam
