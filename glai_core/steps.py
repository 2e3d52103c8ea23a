"""One optimisation step on a batch: autograd in general, written out by hand for the common models.

Small heads are overhead-bound: per step, autograd records a graph, allocates every gradient, and
``zero_grad`` throws them away again. For the ReLU MLP (S and the baseline) and the one-hidden-layer GLAI
block on cached gates, the forward, the cross-entropy gradient and the backward are a handful of matrix
products, so ``HandWrittenStep`` computes them directly into gradient buffers kept for the whole phase
and then runs the same (fused) Adam step. The gradients are the ones autograd computes (tested against
it); only the overhead differs. Everything else (masked Theta, deeper blocks, gates computed on the fly)
takes ``AutogradStep``.

With a bf16 compute dtype the hand-written step is mixed precision the way autocast does it: fp32
weights, gradients and Adam state; each step casts the weights and the batch into reused bf16 buffers,
runs the matrix products in bf16 and takes the loss and its gradient in fp32. On CPUs with native bf16
(AVX-512 BF16, AMX) the products are ~4x faster than fp32 ones (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glai_core.metrics import logits
from glai_core.model import GLAIBlock, StructuralMLP


class AutogradStep:
    """The reference step: forward (under autocast when asked), mean cross-entropy, backward, Adam."""

    def __init__(self, model: nn.Module, autocast: torch.dtype | None = None) -> None:
        self.model, self.autocast = model, autocast

    def __call__(self, x: Tensor, y: Tensor, gates: list[Tensor] | None,
                 optimizer: torch.optim.Optimizer) -> Tensor:
        """Run one step; returns the batch's summed loss as a detached device tensor."""
        with torch.autocast(x.device.type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            out = logits(self.model, x, gates)
        loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach() * y.shape[0]


class HandWrittenStep:
    """Forward and backward by hand for ``StructuralMLP`` and one-hidden-layer ``GLAIBlock``s.

    Gradients live in ``p.grad`` buffers allocated once; the optimiser must not set them to None (the
    step never calls ``zero_grad``: every buffer is overwritten, not accumulated). ``compute_dtype``
    bf16 runs the products on bf16 copies of the weights and the batch (autocast's mixed precision).
    """

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype | None = None) -> None:
        if not supports_hand_written(model, compute_dtype, gates_cached=True):
            raise ValueError(f"no hand-written step for {type(model).__name__}")
        self.model = model
        # in registration order: (weight, bias) per layer for the MLP, (theta, bias) for the block
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        for p in self.trainable:
            p.grad = torch.zeros_like(p)
        self.low = None
        if compute_dtype is not None:
            small = ([layer.weight.numel() < SMALL_LAYER for layer in model.layers for _ in range(2)]
                     if isinstance(model, StructuralMLP) else [False] * len(self.trainable))
            self.low = _LowPrecision(self.trainable, compute_dtype, small)

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, gates: list[Tensor] | None,
                 optimizer: torch.optim.Optimizer) -> Tensor:
        weights = self.low.weights() if self.low else self.trainable
        x = self.low.batch(x) if self.low else x
        if isinstance(self.model, GLAIBlock):
            if gates is None:
                raise ValueError("the hand-written GLAI step needs cached gates")
            loss = _glai_step(self.model, x, y, gates[0], weights)
        else:
            loss = _mlp_step(self.model, x, y, weights)
        optimizer.step()
        return loss


class _LowPrecision:
    """bf16 copies of the trained parameters and of the batch, in buffers reused every step; the
    parameters flagged in ``keep`` (small layers) are used as they are, in fp32."""

    def __init__(self, params: list[nn.Parameter], dtype: torch.dtype, keep: list[bool]) -> None:
        self.dtype = dtype
        pairs = list(zip(params, keep, strict=True))
        self.copies = [p.detach() if kept else p.detach().to(dtype) for p, kept in pairs]
        self.refresh = [(copy, p) for copy, (p, kept) in zip(self.copies, pairs, strict=True) if not kept]
        self.x: Tensor | None = None

    def weights(self) -> list[Tensor]:
        for copy, p in self.refresh:
            copy.copy_(p)
        return self.copies

    def batch(self, x: Tensor) -> Tensor:
        if x.dtype == self.dtype:  # gathered from a bf16 copy of the split (train.fit, on CPU)
            return x
        if self.x is None or self.x.shape[0] < x.shape[0]:
            self.x = x.new_empty(x.shape, dtype=self.dtype)
        out = self.x[:x.shape[0]]
        return out.copy_(x)


def supports_hand_written(model: nn.Module, autocast: torch.dtype | None, gates_cached: bool) -> bool:
    """True where ``HandWrittenStep`` computes autograd's gradients: fp32 weights without masks, the
    products in fp32 or (autocast's mixed precision) bf16."""
    if autocast not in (None, torch.bfloat16):
        return False
    if not all(p.dtype == torch.float32 for p in model.parameters()):
        return False
    if isinstance(model, GLAIBlock):
        return gates_cached and len(model.hidden) == 1 and model.theta_mask is None
    return type(model) is StructuralMLP and all(p.requires_grad for p in model.parameters())


Step = AutogradStep | HandWrittenStep
# Layers with fewer weights than this compute in fp32 even in a bf16 step: their products are too small
# for bf16 to pay, oneDNN's per-call set-up dominates (an 86 -> 3 head at batch 512, forward and both
# gradients: 49 us in bf16 against 25 us in fp32 on 2 cores; 256 -> 10 is already faster in bf16).
SMALL_LAYER = 1024


def make_step(model: nn.Module, autocast: torch.dtype | None, gates_cached: bool) -> Step:
    """The hand-written step where it applies, else autograd's."""
    if supports_hand_written(model, autocast, gates_cached):
        return HandWrittenStep(model, autocast)
    return AutogradStep(model, autocast)


def _cross_entropy_grad(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(summed loss, d mean-loss / d logits) = (softmax - onehot) / batch, computed in ``out``'s memory.

    The log-softmax runs over the transposed view: along a 10-wide row torch's CPU kernel is not
    vectorised (28 us for 512 x 10 on 2 cores against 7 us down the columns; same values bit for bit).
    """
    log_p = torch.log_softmax(out.T, dim=0).T
    loss = -log_p.gather(1, y[:, None]).sum()
    grad = log_p.exp_()
    grad.scatter_add_(1, y[:, None], grad.new_full((y.shape[0], 1), -1.0))
    return loss, grad.mul_(1.0 / y.shape[0])


def product_into(out: Tensor, a: Tensor, b: Tensor, product: Callable[..., Tensor] = torch.mm) -> None:
    """out = product(a, b) (``torch.mm`` or ``torch.bmm``); a bf16 product is rounded to bf16 and then
    widened into the fp32 buffer, as autograd does under autocast."""
    if out.dtype == a.dtype:
        product(a, b, out=out)
    else:
        out.copy_(product(a, b))


def _sum_into(out: Tensor, grad: Tensor) -> None:
    torch.sum(grad, dim=0, dtype=out.dtype, out=out)


def _mlp_step(model: StructuralMLP, x: Tensor, y: Tensor, weights: list[Tensor]) -> Tensor:
    """Each layer computes in its weights' dtype (bf16, or fp32 for small layers and fp32 steps)."""
    layers = list(model.layers)
    pairs = list(zip(weights[0::2], weights[1::2], strict=True))  # (weight, bias) per layer, as computed
    inputs = []  # every layer's input in its dtype; ReLU outputs double as their own backward masks
    out = x
    for index, (weight, bias) in enumerate(pairs):
        inputs.append(out.to(weight.dtype))
        out = torch.addmm(bias, inputs[-1], weight.T)
        if index < len(pairs) - 1:
            out = out.relu_()
    loss, grad = _cross_entropy_grad(out.float(), y)
    for index in range(len(layers) - 1, -1, -1):
        layer, a_in, weight = layers[index], inputs[index], pairs[index][0]
        grad = grad.to(weight.dtype)
        product_into(layer.weight.grad, grad.T, a_in)
        _sum_into(layer.bias.grad, grad)
        if index > 0:  # no gradient for the data; ReLU's backward is autograd's own kernel (one pass)
            grad = torch.ops.aten.threshold_backward(torch.mm(grad, weight), a_in, 0.0)
    return loss


def _glai_step(block: GLAIBlock, x: Tensor, y: Tensor, gate: Tensor, weights: list[Tensor]) -> Tensor:
    """y = c + sum_j g_j (A_j x~): u = x~ Theta^T per (k, j), masked and summed over j.

    dTheta[k, j, :] = sum_b grad[b, k] g[b, j] x~[b, :], one (m h, batch) x (batch, d) product plus its
    row sums for the constant input's column; dc = sum_b grad[b, :]. The mask-and-sum runs in fp32, as
    in ``GLAIBlock.forward`` under autocast.
    """
    theta = weights[0]  # the fp32 bias is added to the fp32 sum, as autocast leaves it
    batch, m, h, d = x.shape[0], block.out_features, block.hidden[0], block.in_features
    flat = theta.view(m * h, d + 1)
    u = torch.addmm(flat[:, -1], x, flat[:, :-1].T).view(batch, m, h).float()
    gate = gate.to(u.dtype)
    out = torch.bmm(u, gate.unsqueeze(2)).squeeze(2).add_(block.bias)
    loss, grad = _cross_entropy_grad(out, y)
    grad = grad.contiguous()  # (batch, m) rows, so the outer product below views as (batch, m h)
    path_grad = (grad.unsqueeze(2) * gate.unsqueeze(1)).view(batch, m * h).to(x.dtype)
    flat_grad = block.theta.grad.view(m * h, d + 1)
    product_into(flat_grad[:, :-1], path_grad.T, x)
    _sum_into(flat_grad[:, -1], path_grad)
    torch.sum(grad, dim=0, out=block.bias.grad)
    return loss
