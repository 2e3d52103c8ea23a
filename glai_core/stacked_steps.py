"""One training step of K stacked heads, written out by hand for one hidden layer (as ``glai_core.steps``).

A stacked step through autograd records a graph per step and allocates every gradient; for the common
one-hidden-layer heads the forward, the cross-entropy gradient and the backward are a few products, so
``StackedStep`` computes them straight into gradient buffers kept for the phase, then runs the stacked
Adam. The gradients are autograd's (tested against it); deeper heads take ``AutogradStackedStep``
(under autocast in a bf16 job, as their own job's ``AutogradStep``).

* MLP heads (``StackedMLP``): the first layer is one GEMM of the shared batch against every head's units,
  (batch, d) x (d, K h); the output layer and its gradients are ``bmm`` over the head axis.
* GLAI heads (``StackedGLAI``) on cached gates: u = x~ Θ^T for every head in one GEMM, masked by each
  head's gates and summed; dΘ is one (K m h, batch) x (batch, d) product.

With a bf16 compute dtype the step is the single job's mixed precision (``glai_core.steps``): fp32
weights, gradients and Adam state, the products on bf16 copies refreshed every step, the loss and its
gradient in fp32. A layer runs in bf16 where a head's own job would run it so (per-head weights at least
``steps.SMALL_LAYER``; Θ always), so a head of a sweep computes as its job does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from glai_core.stacked import StackedAdam, StackedGLAI, StackedMLP, head_losses
from glai_core.steps import SMALL_LAYER, product_into


def _cross_entropy(out: Tensor, y: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """(summed loss per head, d mean-loss / d logits) for logits whose last dim is the class; ``y`` is
    broadcast to ``out.shape[:-1]``. The gradient is written into the softmax's memory."""
    log_p = torch.log_softmax(out, dim=-1)
    target = y.expand(out.shape[:-1]).unsqueeze(-1)
    picked = log_p.gather(-1, target).squeeze(-1)
    grad = log_p.exp_()
    grad.scatter_add_(-1, target, grad.new_full(target.shape, -1.0))
    return picked, grad.mul_(1.0 / batch)


class _Copies:
    """The weights a step multiplies by: bf16 copies of the parameters flagged ``low`` (refreshed every
    step, rebuilt when heads leave the stack), the fp32 parameters themselves for the rest."""

    def __init__(self, params: list[Tensor], low: list[bool], dtype: torch.dtype) -> None:
        self.params, self.low, self.dtype = params, low, dtype
        self.copies: list[Tensor] = []
        self.sources: list[int] = []

    def weights(self) -> list[Tensor]:
        sources = [p.data_ptr() for p in self.params]
        if sources != self.sources:  # the first step, or heads left the stack (new storage)
            self.sources = sources
            self.copies = [p.detach().to(self.dtype) if low else p.detach()
                           for p, low in zip(self.params, self.low, strict=True)]
            return self.copies
        for copy, p, low in zip(self.copies, self.params, self.low, strict=True):
            if low:
                copy.copy_(p)
        return self.copies


class StackedStep:
    """Hand-written step of a one-hidden-layer ``StackedMLP`` or ``StackedGLAI`` (fp32, or bf16 products
    with ``compute_dtype``)."""

    def __init__(self, model: StackedMLP | StackedGLAI, optimizer: StackedAdam,
                 compute_dtype: torch.dtype | None = None) -> None:
        if not supports(model):
            raise ValueError("the hand-written stacked step takes one hidden layer in float32")
        self.model, self.optimizer = model, optimizer
        if isinstance(model, StackedGLAI):
            params, low = [model.theta], [True]
        else:
            params = [model.weights[0], model.biases[0], model.weights[1], model.biases[1]]
            low = [w[0].numel() >= SMALL_LAYER for w in (model.weights[0], model.weights[1])
                   for _ in range(2)]
        self.copies = None if compute_dtype is None else _Copies(params, low, compute_dtype)

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, gates: list[Tensor] | None) -> Tensor:
        """One step for every head; returns the (K,) summed training loss (on the device)."""
        weights = None if self.copies is None else self.copies.weights()
        if isinstance(self.model, StackedGLAI):
            assert gates is not None
            loss = _glai_step(self.model, x, y, gates[0], weights)
        else:
            loss = _mlp_step(self.model, x, y, weights)
        self.optimizer.step()
        return loss


class AutogradStackedStep:
    """The reference: stacked forward (under autocast with ``autocast``, as a deep head's own job),
    per-head mean cross-entropy, autograd, stacked Adam."""

    def __init__(self, model: StackedMLP | StackedGLAI, optimizer: StackedAdam,
                 autocast: torch.dtype | None = None) -> None:
        self.model, self.optimizer, self.autocast = model, optimizer, autocast

    def __call__(self, x: Tensor, y: Tensor, gates: list[Tensor] | None) -> Tensor:
        self.optimizer.zero_grad()
        with torch.autocast(x.device.type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            if isinstance(self.model, StackedGLAI):
                assert gates is not None
                logits = self.model(x, gates)
            else:
                logits = self.model(x)
        losses = head_losses(logits.float(), y)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach() * y.shape[0]


def supports(model: StackedMLP | StackedGLAI) -> bool:
    return len(model.widths) == 1 and all(p.dtype == torch.float32 for p in model.parameters())


def make_stacked_step(model: StackedMLP | StackedGLAI, optimizer: StackedAdam,
                      compute_dtype: torch.dtype | None = None) -> StackedStep | AutogradStackedStep:
    """The hand-written step where it applies, else autograd's; ``compute_dtype`` bf16: bf16 products."""
    if supports(model):
        return StackedStep(model, optimizer, compute_dtype)
    return AutogradStackedStep(model, optimizer, compute_dtype)


def _mlp_step(model: StackedMLP, x: Tensor, y: Tensor, weights: list[Tensor] | None) -> Tensor:
    """Each layer computes in its weights' dtype (``weights``: the step's copies; None: fp32)."""
    w1, w2 = model.weights[0], model.weights[1]
    b1, b2 = model.biases[0], model.biases[1]
    c1, cb1, c2, cb2 = weights if weights is not None else (w1, b1, w2, b2)
    k, h, d = w1.shape
    batch = x.shape[0]
    x = x.to(c1.dtype)
    hidden = torch.addmm(cb1.reshape(-1), x, c1.reshape(k * h, d).T).relu_()  # (batch, K h)
    per_head = hidden.to(c2.dtype).view(batch, k, h).transpose(0, 1)  # (K, batch, h)
    out = torch.baddbmm(cb2.unsqueeze(1), per_head, c2.transpose(1, 2))  # (K, batch, m)
    picked, grad = _cross_entropy(out.float(), y, batch)
    grad = grad.to(c2.dtype)
    product_into(w2.grad, grad.transpose(1, 2), per_head, torch.bmm)  # type: ignore[arg-type]
    torch.sum(grad, dim=1, dtype=b2.dtype, out=b2.grad)  # type: ignore[arg-type]
    back = torch.bmm(grad, c2).transpose(0, 1).reshape(batch, k * h).to(hidden.dtype)  # (batch, K h)
    back = torch.ops.aten.threshold_backward(back, hidden, 0.0)
    product_into(w1.grad.view(k * h, d), back.T, x)  # type: ignore[union-attr]
    torch.sum(back, dim=0, dtype=b1.dtype, out=b1.grad.view(-1))  # type: ignore[union-attr]
    return -picked.sum(dim=1)


def _glai_step(model: StackedGLAI, x: Tensor, y: Tensor, gate: Tensor,
               weights: list[Tensor] | None) -> Tensor:
    """y_k = c_k + sum_j g_kj (A_kj x~) for every head k; ``gate`` is (K, batch, h).

    x~ = [x, 1] is built once per step, so both products run on Θ as stored (contiguous): slicing off its
    constant column instead made MKL copy the whole of Θ and of its gradient every step. The mask-and-sum
    runs in fp32, as in ``GLAIBlock.forward`` under autocast."""
    theta = model.theta if weights is None else weights[0]  # (K, m, h, d+1), the fp32 bias is added
    k, m, h, width = theta.shape
    batch = x.shape[0]
    flat = theta.view(k * m * h, width)
    x1 = torch.cat([x, x.new_ones(batch, 1)], dim=1).to(theta.dtype)
    u = torch.mm(x1, flat.T).view(batch, k, m, h).float()
    g = gate.to(u.dtype).transpose(0, 1).unsqueeze(2)  # (batch, K, 1, h)
    out = (u * g).sum(dim=-1).add_(model.bias)  # (batch, K, m)
    picked, grad = _cross_entropy(out, y[:, None], batch)
    path_grad = (grad.unsqueeze(-1) * g).view(batch, k * m * h).to(x1.dtype)
    product_into(model.theta.grad.view(k * m * h, width), path_grad.T, x1)  # type: ignore[union-attr]
    torch.sum(grad, dim=0, out=model.bias.grad)  # type: ignore[arg-type]
    return -picked.sum(dim=0)


__all__ = ["AutogradStackedStep", "StackedStep", "make_stacked_step", "supports"]
