"""One optimisation step on a batch: autograd in general, written out by hand for the common models.

Small heads are overhead-bound: per step, autograd records a graph, allocates every gradient, and
``zero_grad`` throws them away again. For the ReLU MLP (S and the baseline) and the one-hidden-layer GLAI
block on cached gates, the forward, the cross-entropy gradient and the backward are a handful of matrix
products, so ``HandWrittenStep`` computes them directly into gradient buffers kept for the whole phase
and then runs the same (fused) Adam step. The gradients are the ones autograd computes (tested against
it); only the overhead differs. Everything else (autocast, masked Theta, deeper blocks, gates computed on
the fly) takes ``AutogradStep``.
"""

from __future__ import annotations

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
    step never calls ``zero_grad``: every buffer is overwritten, not accumulated).
    """

    def __init__(self, model: nn.Module) -> None:
        if not supports_hand_written(model, None, gates_cached=True):
            raise ValueError(f"no hand-written step for {type(model).__name__}")
        self.model = model
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, gates: list[Tensor] | None,
                 optimizer: torch.optim.Optimizer) -> Tensor:
        if isinstance(self.model, GLAIBlock):
            if gates is None:
                raise ValueError("the hand-written GLAI step needs cached gates")
            loss = _glai_step(self.model, x, y, gates[0])
        else:
            loss = _mlp_step(self.model, x, y)
        optimizer.step()
        return loss


def supports_hand_written(model: nn.Module, autocast: torch.dtype | None, gates_cached: bool) -> bool:
    """True where ``HandWrittenStep`` computes exactly autograd's gradients (fp32, no masks)."""
    if autocast is not None or not all(p.dtype == torch.float32 for p in model.parameters()):
        return False
    if isinstance(model, GLAIBlock):
        return gates_cached and len(model.hidden) == 1 and model.theta_mask is None
    return type(model) is StructuralMLP and all(p.requires_grad for p in model.parameters())


Step = AutogradStep | HandWrittenStep


def make_step(model: nn.Module, autocast: torch.dtype | None, gates_cached: bool) -> Step:
    """The hand-written step where it applies, else autograd's."""
    if supports_hand_written(model, autocast, gates_cached):
        return HandWrittenStep(model)
    return AutogradStep(model, autocast)


def _cross_entropy_grad(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(summed loss, d mean-loss / d logits) = (softmax - onehot) / batch, computed in ``out``'s memory."""
    log_p = torch.log_softmax(out, dim=1)
    loss = -log_p.gather(1, y[:, None]).sum()
    grad = log_p.exp_()
    grad.scatter_add_(1, y[:, None], grad.new_full((y.shape[0], 1), -1.0))
    return loss, grad.mul_(1.0 / y.shape[0])


def _mlp_step(model: StructuralMLP, x: Tensor, y: Tensor) -> Tensor:
    layers = list(model.layers)
    inputs = [x]  # the input of every layer; ReLU outputs double as their own backward masks
    for layer in layers[:-1]:
        inputs.append(torch.addmm(layer.bias, inputs[-1], layer.weight.T).relu_())
    last = layers[-1]
    loss, grad = _cross_entropy_grad(torch.addmm(last.bias, inputs[-1], last.weight.T), y)
    for index in range(len(layers) - 1, -1, -1):
        layer, a_in = layers[index], inputs[index]
        torch.mm(grad.T, a_in, out=layer.weight.grad)
        torch.sum(grad, dim=0, out=layer.bias.grad)
        if index > 0:  # no gradient for the data; ReLU's backward is autograd's own kernel (one pass)
            grad = torch.ops.aten.threshold_backward(torch.mm(grad, layer.weight), a_in, 0.0)
    return loss


def _glai_step(block: GLAIBlock, x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """y = c + sum_j g_j (A_j x~): u = x~ Theta^T per (k, j), masked and summed over j.

    dTheta[k, j, :] = sum_b grad[b, k] g[b, j] x~[b, :], one (m h, batch) x (batch, d) product plus its
    row sums for the constant input's column; dc = sum_b grad[b, :].
    """
    batch, m, h, d = x.shape[0], block.out_features, block.hidden[0], block.in_features
    flat = block.theta.view(m * h, d + 1)
    u = torch.addmm(flat[:, -1], x, flat[:, :-1].T).view(batch, m, h)
    gate = gate.to(u.dtype)
    out = torch.bmm(u, gate.unsqueeze(2)).squeeze(2).add_(block.bias)
    loss, grad = _cross_entropy_grad(out, y)
    path_grad = (grad.unsqueeze(2) * gate.unsqueeze(1)).view(batch, m * h)
    flat_grad = block.theta.grad.view(m * h, d + 1)
    torch.mm(path_grad.T, x, out=flat_grad[:, :-1])
    torch.sum(path_grad, dim=0, out=flat_grad[:, -1])
    torch.sum(grad, dim=0, out=block.bias.grad)
    return loss
