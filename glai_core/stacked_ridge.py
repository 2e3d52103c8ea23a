"""The closed-form phase 2 of K stacked GLAI heads at once, in its dual (kernel) form.

Each head's ridge problem is ``solvers.dual_solve``'s: (K_c + lam I) alpha = R_c with the path kernel
K = (X~ X~^T) * prod_l (G_l G_l^T [+ 1 below the last layer]) (elementwise), shrunk towards the rescaled
warm start, lambda from the grid on validation, a temperature fitted on validation. Stacked, the input part
X~ X~^T is shared by every head (the rows are), the gate parts are one batched product, and every lambda is
one batched Cholesky over the heads. Padded units are never active, so they add nothing to any kernel.
Heads are solved in chunks that fit ``max_bytes`` (two N x N float64 matrices per head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from glai_core.solvers import fit_temperature, path_kernels
from glai_core.spd import spd_solve
from glai_core.stacked import StackedGLAI, glai_logits
from glai_core.train import EVAL_BATCH


def dual_bytes(n: int, n_val: int) -> int:
    """Memory of one head's dual solve: the kernel and its factor (N x N), the validation kernel."""
    return 8 * (2 * n * n + n_val * n)


def _logits(theta: Tensor, bias: Tensor, x: Tensor, gates: list[Tensor]) -> Tensor:
    parts = [glai_logits(theta, bias, x[s:s + EVAL_BATCH], [g[:, s:s + EVAL_BATCH] for g in gates])
             for s in range(0, x.shape[0], EVAL_BATCH)]
    return torch.cat(parts, dim=1)


def _adjoint(alpha: Tensor, theta_shape: torch.Size, x: Tensor, gates: list[Tensor]) -> Tensor:
    """F^T alpha per head (Θ-shaped, float64): the gradient of <F Θ, alpha> with respect to Θ."""
    with torch.enable_grad():
        theta = torch.zeros(theta_shape, dtype=torch.float64, device=alpha.device, requires_grad=True)
        bias = torch.zeros(theta_shape[0], theta_shape[1], dtype=torch.float64, device=alpha.device)
        total = torch.zeros((), dtype=torch.float64, device=alpha.device)
        for s in range(0, x.shape[0], EVAL_BATCH):
            out = glai_logits(theta, bias, x[s:s + EVAL_BATCH].double(), [g[:,
                                                                            s:s + EVAL_BATCH] for g in gates])
            total = total + (out * alpha[:, s:s + EVAL_BATCH]).sum()
        (grad,) = torch.autograd.grad(total, theta)
    return grad


@torch.no_grad()
def stacked_dual_fit(model: StackedGLAI, feature_dims: list[int], train_x: Tensor, train_y: Tensor,
                     train_gates: list[Tensor], val_x: Tensor, val_y: Tensor, val_gates: list[Tensor],
                     relative_lambdas: list[float], warm_start: bool = True,
                     max_bytes: int = 2 * 1024**3) -> list[dict[str, float]]:
    """Solve every head in place (``model``'s Θ and c become the temperature-scaled solutions); returns per
    head its ridge_lambda (relative), temperature, val_accuracy and val_loss."""
    n, n_val = train_x.shape[0], val_x.shape[0]
    chunk = max(1, int(max_bytes // max(1, dual_bytes(n, n_val))))
    report: list[dict[str, float]] = []
    for start in range(0, model.heads, chunk):
        heads = slice(start, min(model.heads, start + chunk))
        report += _solve_chunk(model, heads, feature_dims[heads], train_x, train_y,
                               [g[heads] for g in train_gates], val_x, val_y, [g[heads] for g in val_gates],
                               relative_lambdas, warm_start)
    return report


def _solve_chunk(model: StackedGLAI, heads: slice, dims: list[int], x: Tensor, y: Tensor, gates: list[Tensor],
                 val_x: Tensor, val_y: Tensor, val_gates: list[Tensor], relative_lambdas: list[float],
                 warm_start: bool) -> list[dict[str, float]]:
    theta0, bias0 = model.theta[heads].double(), model.bias[heads].double()
    k, m = theta0.shape[0], theta0.shape[1]
    onehot = F.one_hot(y, m).double().unsqueeze(0)
    residual = onehot.expand(k, -1, -1).clone()
    val_base = torch.zeros(k, val_x.shape[0], m, dtype=torch.float64, device=x.device)
    scale = torch.zeros(k, dtype=torch.float64, device=x.device)
    if warm_start:  # prior = alpha (Θ0, c0), alpha the least-squares scale of the warm logits to Y
        warm = _logits(theta0, bias0, x.double(), gates)
        scale = (warm * onehot).sum(dim=(1, 2)) / (warm * warm).sum(dim=(1, 2)).clamp_min(1e-300)
        residual -= scale.view(k, 1, 1) * (warm - bias0.unsqueeze(1))
        val_warm = _logits(theta0, bias0, val_x.double(), val_gates)
        val_base = scale.view(k, 1, 1) * (val_warm - bias0.unsqueeze(1))
    kernel = path_kernels(x, gates, x, gates)
    val_kernel = path_kernels(val_x, val_gates, x, gates)
    diag_scale = kernel.diagonal(dim1=1, dim2=2).sum(dim=1) / torch.tensor(dims, dtype=torch.float64,
                                                                           device=x.device)
    residual_mean = residual.mean(dim=1)  # (k, m)
    row_mean = kernel.mean(dim=1)  # (k, N)
    kernel -= row_mean.unsqueeze(2)
    kernel -= row_mean.unsqueeze(1)
    kernel += row_mean.mean(dim=1).view(k, 1, 1)
    centred = residual - residual_mean.unsqueeze(1)
    best: list[tuple[float, float, float, float, Tensor, Tensor] | None] = [None] * k
    eye = torch.arange(x.shape[0], device=x.device)
    for relative in relative_lambdas:
        lam = relative * diag_scale
        kernel[:, eye, eye] += lam.unsqueeze(1)
        alpha, ok = spd_solve(kernel, centred)
        kernel[:, eye, eye] -= lam.unsqueeze(1)
        bias = residual_mean - torch.bmm(row_mean.unsqueeze(1), alpha).squeeze(1)
        out = val_base + torch.bmm(val_kernel, alpha) + bias.unsqueeze(1)
        for h in range(k):
            if not bool(ok[h]):
                continue
            temperature = fit_temperature(out[h], val_y)
            scaled = out[h] * temperature
            loss = float(F.cross_entropy(scaled, val_y))
            acc = float((scaled.argmax(dim=1) == val_y).double().mean())
            current = best[h]
            if current is None or (acc, -loss) > (current[0], -current[1]):
                best[h] = (acc, loss, relative, temperature, alpha[h].clone(), bias[h].clone())
    del kernel, val_kernel
    if any(b is None for b in best):
        raise RuntimeError("a head's kernel matrix is not positive definite for any lambda of the grid")
    alphas = torch.stack([b[4] for b in best])  # type: ignore[index]
    theta = _adjoint(alphas, theta0.shape, x, gates) + scale.view(k, *([1] * (theta0.dim() - 1))) * theta0
    temperatures = torch.tensor([b[3] for b in best], dtype=torch.float64,
                                device=x.device)  # type: ignore[index]
    biases = torch.stack([b[5] for b in best])  # type: ignore[index]
    model.theta[heads] = (theta * temperatures.view(k, *([1] * (theta.dim() - 1)))).to(model.theta.dtype)
    model.bias[heads] = (biases * temperatures.unsqueeze(1)).to(model.bias.dtype)
    return [{"ridge_lambda": b[2], "temperature": b[3], "val_accuracy": b[0],
             "val_loss": b[1]}  # type: ignore[index]
            for b in best]


__all__ = ["dual_bytes", "stacked_dual_fit"]
