"""One training step of K stacked heads, written out by hand for one hidden layer (as ``glai_core.steps``).

A stacked step through autograd records a graph per step and allocates every gradient; for the common
one-hidden-layer heads the forward, the cross-entropy gradient and the backward are a few products, so
``StackedStep`` computes them straight into gradient buffers kept for the phase, then runs the stacked
Adam. The gradients are autograd's (tested against it); deeper heads take ``AutogradStackedStep``.

* MLP heads (``StackedMLP``): the first layer is one GEMM of the shared batch against every head's units,
  (batch, d) x (d, K h); the output layer and its gradients are ``bmm`` over the head axis.
* GLAI heads (``StackedGLAI``) on cached gates: u = x~ Θ^T for every head in one GEMM, masked by each
  head's gates and summed; dΘ is one (K m h, batch) x (batch, d) product.
"""

from __future__ import annotations

import torch
from torch import Tensor

from glai_core.stacked import StackedAdam, StackedGLAI, StackedMLP, head_losses


def _cross_entropy(out: Tensor, y: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """(summed loss per head, d mean-loss / d logits) for logits whose last dim is the class; ``y`` is
    broadcast to ``out.shape[:-1]``. The gradient is written into the softmax's memory."""
    log_p = torch.log_softmax(out, dim=-1)
    target = y.expand(out.shape[:-1]).unsqueeze(-1)
    picked = log_p.gather(-1, target).squeeze(-1)
    grad = log_p.exp_()
    grad.scatter_add_(-1, target, grad.new_full(target.shape, -1.0))
    return picked, grad.mul_(1.0 / batch)


class StackedStep:
    """Hand-written step of a one-hidden-layer ``StackedMLP`` or ``StackedGLAI`` (fp32)."""

    def __init__(self, model: StackedMLP | StackedGLAI, optimizer: StackedAdam) -> None:
        if not supports(model):
            raise ValueError("the hand-written stacked step takes one hidden layer in float32")
        self.model, self.optimizer = model, optimizer

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, gates: list[Tensor] | None) -> Tensor:
        """One step for every head; returns the (K,) summed training loss (on the device)."""
        if isinstance(self.model, StackedGLAI):
            assert gates is not None
            loss = _glai_step(self.model, x, y, gates[0])
        else:
            loss = _mlp_step(self.model, x, y)
        self.optimizer.step()
        return loss


class AutogradStackedStep:
    """The reference: stacked forward, per-head mean cross-entropy, autograd, stacked Adam."""

    def __init__(self, model: StackedMLP | StackedGLAI, optimizer: StackedAdam) -> None:
        self.model, self.optimizer = model, optimizer

    def __call__(self, x: Tensor, y: Tensor, gates: list[Tensor] | None) -> Tensor:
        self.optimizer.zero_grad()
        if isinstance(self.model, StackedGLAI):
            assert gates is not None
            logits = self.model(x, gates)
        else:
            logits = self.model(x)
        losses = head_losses(logits, y)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach() * y.shape[0]


def supports(model: StackedMLP | StackedGLAI) -> bool:
    return len(model.widths) == 1 and all(p.dtype == torch.float32 for p in model.parameters())


def make_stacked_step(model: StackedMLP | StackedGLAI,
                      optimizer: StackedAdam) -> StackedStep | AutogradStackedStep:
    return StackedStep(model, optimizer) if supports(model) else AutogradStackedStep(model, optimizer)


def _mlp_step(model: StackedMLP, x: Tensor, y: Tensor) -> Tensor:
    w1, w2 = model.weights[0], model.weights[1]
    b1, b2 = model.biases[0], model.biases[1]
    k, h, d = w1.shape
    batch = x.shape[0]
    hidden = torch.addmm(b1.reshape(-1), x, w1.reshape(k * h, d).T).relu_()  # (batch, K h)
    per_head = hidden.view(batch, k, h).transpose(0, 1)  # (K, batch, h), a view
    out = torch.baddbmm(b2.unsqueeze(1), per_head, w2.transpose(1, 2))  # (K, batch, m)
    picked, grad = _cross_entropy(out, y, batch)
    torch.bmm(grad.transpose(1, 2), per_head, out=w2.grad)  # type: ignore[arg-type]
    torch.sum(grad, dim=1, out=b2.grad)  # type: ignore[arg-type]
    back = torch.bmm(grad, w2)  # (K, batch, h)
    back = torch.ops.aten.threshold_backward(back.transpose(0, 1).reshape(batch, k * h), hidden, 0.0)
    torch.mm(back.T, x, out=w1.grad.view(k * h, d))  # type: ignore[union-attr]
    torch.sum(back, dim=0, out=b1.grad.view(-1))  # type: ignore[union-attr]
    return -picked.sum(dim=1)


def _glai_step(model: StackedGLAI, x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """y_k = c_k + sum_j g_kj (A_kj x~) for every head k; ``gate`` is (K, batch, h).

    x~ = [x, 1] is built once per step, so both products run on Θ as stored (contiguous): slicing off its
    constant column instead made MKL copy the whole of Θ and of its gradient every step."""
    theta = model.theta  # (K, m, h, d+1)
    k, m, h, width = theta.shape
    batch = x.shape[0]
    flat = theta.view(k * m * h, width)
    x1 = torch.cat([x, x.new_ones(batch, 1)], dim=1)
    u = torch.mm(x1, flat.T).view(batch, k, m, h)
    g = gate.to(u.dtype).transpose(0, 1).unsqueeze(2)  # (batch, K, 1, h)
    out = (u * g).sum(dim=-1).add_(model.bias)  # (batch, K, m)
    picked, grad = _cross_entropy(out, y[:, None], batch)
    path_grad = (grad.unsqueeze(-1) * g).view(batch, k * m * h)
    torch.mm(path_grad.T, x1, out=model.theta.grad.view(k * m * h, width))  # type: ignore[union-attr]
    torch.sum(grad, dim=0, out=model.bias.grad)  # type: ignore[arg-type]
    return -picked.sum(dim=0)


__all__ = ["AutogradStackedStep", "StackedStep", "make_stacked_step", "supports"]
