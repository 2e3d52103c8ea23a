"""K heads in one set of tensors: stacked weights, batched GEMMs, one Adam step for all of them.

A sweep trains many small heads on the same rows. Run one after another, each pays the per-step overhead
that dominates small heads (launches, optimiser, Python); stacked on a leading head axis, a step is a few
large products for all of them: the first layer is one GEMM of the shared batch against every head's
weights side by side, deeper layers are ``baddbmm`` over the head axis.

Heads may differ in width: every layer is padded to the widest head. A padded unit has zero weights in and
out, so its pre-activation is 0, ReLU passes nothing and its gradient is 0 (ReLU's derivative at 0 is 0 in
torch): it stays zero under Adam and changes no output. ``head(k)`` cuts head k back to its own widths.

* ``StackedMLP``: K ReLU MLPs (GLAI's structural networks, or MLP baselines);
* ``StackedGLAI``: K GLAI blocks' path weights on their cached gates (the always-on unit of layers below
  the last sits after the padding);
* ``StackedAdam``: Adam (as ``torch.optim.Adam``) with a learning rate and a step count per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glai_core.model import GLAIBlock, StructuralMLP, theta_shape


def _widest(hidden: list[list[int]]) -> list[int]:
    depth = {len(h) for h in hidden}
    if len(depth) != 1:
        raise ValueError(f"stacked heads need one depth, got {sorted(depth)}")
    return [max(h[level] for h in hidden) for level in range(len(hidden[0]))]


class StackedMLP(nn.Module):
    """K MLPs d -> h_1k -> ... -> h_Lk -> m; ``forward(x)`` gives (K, batch, m) logits."""

    def __init__(self, in_features: int, hidden: list[list[int]], out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.hidden = [list(h) for h in hidden]
        self.widths = _widest(self.hidden)
        sizes = [in_features, *self.widths, out_features]
        k = len(hidden)
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(k, b, a)) for a, b in zip(sizes[:-1],
                                                                                           sizes[1:],
                                                                                           strict=True))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(k, b)) for b in sizes[1:])

    @property
    def heads(self) -> int:
        return self.weights[0].shape[0]

    @classmethod
    def from_heads(cls, models: list[StructuralMLP]) -> StackedMLP:
        """Stack copies of ``models`` (one depth, the same d and m), padded to the widest."""
        first = models[0]
        stacked = cls(first.in_features, [m.hidden for m in models], first.out_features)
        reference = next(first.parameters())
        stacked.to(reference.device, reference.dtype)
        with torch.no_grad():
            for k, model in enumerate(models):
                for level, layer in enumerate(model.layers):
                    out, inp = layer.weight.shape
                    stacked.weights[level][k, :out, :inp] = layer.weight
                    stacked.biases[level][k, :out] = layer.bias
        return stacked

    def head(self, k: int) -> StructuralMLP:
        """Head ``k`` as a plain ``StructuralMLP`` of its own widths (a copy)."""
        model = StructuralMLP(self.in_features, self.hidden[k], self.out_features)
        model.to(self.weights[0].device, self.weights[0].dtype)
        with torch.no_grad():
            for level, layer in enumerate(model.layers):
                out, inp = layer.weight.shape
                layer.weight.copy_(self.weights[level][k, :out, :inp])
                layer.bias.copy_(self.biases[level][k, :out])
        return model

    def _hidden(self, x: Tensor) -> list[Tensor]:
        """Pre-activations of every hidden layer, (K, batch, H_l) each."""
        k, batch = self.heads, x.shape[0]
        first, bias = self.weights[0], self.biases[0]
        z = torch.addmm(bias.reshape(-1), x, first.reshape(-1, self.in_features).T)
        out = [z.view(batch, k, -1).transpose(0, 1)]
        for weight, bias in zip(list(self.weights)[1:-1], list(self.biases)[1:-1], strict=True):
            out.append(torch.baddbmm(bias.unsqueeze(1), torch.relu(out[-1]), weight.transpose(1, 2)))
        return out

    def forward(self, x: Tensor) -> Tensor:
        last = torch.relu(self._hidden(x)[-1])
        return torch.baddbmm(self.biases[-1].unsqueeze(1), last, self.weights[-1].transpose(1, 2))

    @torch.no_grad()
    def gates(self, x: Tensor) -> list[Tensor]:
        """(K, batch, H_l) bool per hidden layer; padded units are never active."""
        return [z > 0 for z in self._hidden(x)]

    @torch.no_grad()
    def keep(self, index: Tensor) -> None:
        """Keep only the heads at ``index`` (in that order)."""
        for params in (self.weights, self.biases):
            for p in params:
                p.data = p.data.index_select(0, index).contiguous()
        self.hidden = [self.hidden[i] for i in index.tolist()]


def _pad_dims(hidden: list[int], widths: list[int]) -> list[tuple[int, list[int], int]]:
    """Per padded Θ dim (after m): (dim, source indices, padded size); layers below the last carry their
    always-on unit last, which moves to the end of the padding."""
    dims = [(1, list(range(hidden[-1])), widths[-1])]
    for position, level in enumerate(reversed(range(len(hidden) - 1)), start=2):
        dims.append((position, list(range(hidden[level])) + [widths[level]], widths[level] + 1))
    return dims


class StackedGLAI(nn.Module):
    """K GLAI blocks' (Θ, c) on cached gates; ``forward(x, gates)`` gives (K, batch, m) logits.

    Θ is (K, m, H_L, H_{L-1}+1, ..., H_1+1, d+1), as ``GLAIBlock`` with the widest widths. As in the block,
    the input index is contracted first (one GEMM for every head: the batch is shared), then each layer's
    gates mask and sum, innermost first.
    """

    def __init__(self, in_features: int, hidden: list[list[int]], out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.hidden = [list(h) for h in hidden]
        self.widths = _widest(self.hidden)
        shape = theta_shape(in_features, self.widths, out_features)
        self.theta = nn.Parameter(torch.zeros(len(hidden), *shape))
        self.bias = nn.Parameter(torch.zeros(len(hidden), out_features))

    @property
    def heads(self) -> int:
        return self.theta.shape[0]

    @classmethod
    def from_blocks(cls, blocks: list[GLAIBlock]) -> StackedGLAI:
        first = blocks[0]
        stacked = cls(first.in_features, [b.hidden for b in blocks], first.out_features)
        stacked.to(first.theta.device, first.theta.dtype)
        with torch.no_grad():
            for k, block in enumerate(blocks):
                stacked.theta[k] = stacked._pad(block.effective_theta().detach(), block.hidden)
                stacked.bias[k] = block.bias
        return stacked

    def _pad(self, theta: Tensor, hidden: list[int]) -> Tensor:
        out = theta
        for dim, index, size in _pad_dims(hidden, self.widths):
            shape = list(out.shape)
            shape[dim] = size
            padded = out.new_zeros(shape)
            padded.index_copy_(dim, torch.tensor(index, device=out.device), out)
            out = padded
        return out

    def head_theta(self, k: int) -> tuple[Tensor, Tensor]:
        """Head ``k``'s (Θ, c) in its own widths (copies)."""
        out = self.theta[k].detach()
        for dim, index, _ in _pad_dims(self.hidden[k], self.widths):
            out = out.index_select(dim, torch.tensor(index, device=out.device))
        return out.contiguous().clone(), self.bias[k].detach().clone()

    def forward(self, x: Tensor, gates: list[Tensor]) -> Tensor:
        return glai_logits(self.theta, self.bias, x, gates)

    @torch.no_grad()
    def keep(self, index: Tensor) -> None:
        self.theta.data = self.theta.data.index_select(0, index).contiguous()
        self.bias.data = self.bias.data.index_select(0, index).contiguous()
        self.hidden = [self.hidden[i] for i in index.tolist()]


def glai_logits(theta: Tensor, bias: Tensor, x: Tensor, gates: list[Tensor]) -> Tensor:
    """(K, batch, m) logits of stacked path weights ``theta`` (K, m, H_L, ..., d+1) on cached gates
    (K, batch, H_l) per layer: the input index first (one GEMM for every head), then each layer's mask."""
    k, batch, d = theta.shape[0], x.shape[0], theta.shape[-1] - 1
    flat = theta.reshape(-1, d + 1)
    u = torch.addmm(flat[:, -1], x, flat[:, :-1].T).view(batch, k, *theta.shape[1:-1])
    last = len(gates) - 1
    for level, gate in enumerate(gates):
        g = gate.to(u.dtype)
        if level < last:
            g = torch.cat([g, g.new_ones(k, batch, 1)], dim=2)
        g = g.transpose(0, 1).reshape(batch, k, *([1] * (u.dim() - 3)), g.shape[2])
        u = (u * g).sum(dim=-1)
    return u.transpose(0, 1) + bias.unsqueeze(1)


def head_losses(logits: Tensor, y: Tensor) -> Tensor:
    """(K,) mean cross-entropy per head of (K, batch, m) logits; their sum's gradient is each head's own."""
    k, batch, m = logits.shape
    return F.cross_entropy(logits.reshape(k * batch, m), y.repeat(k), reduction="none").view(k, batch).mean(1)


@torch.no_grad()
def head_scores(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(K,) summed cross-entropy and (K,) correct predictions of (K, batch, m) logits."""
    k, batch, m = logits.shape
    loss = F.cross_entropy(logits.reshape(k * batch, m).float(), y.repeat(k), reduction="none").view(k, batch)
    correct = (logits.argmax(dim=2) == y.unsqueeze(0)).sum(dim=1)
    return loss.sum(dim=1, dtype=torch.float64), correct


_FUSED = getattr(torch, "_fused_adam_", None)  # the kernel Adam(fused=True) calls (see glai_core.optim)


class StackedAdam:
    """Adam (torch's update: L2 weight decay, bias-corrected moments) on stacked parameters, with a learning
    rate and a step count per head, so heads can differ in rate and restart (backtracking) on their own.

    Heads that share a rate and a step count are one call of torch's fused Adam kernel: on the whole
    stacked tensors when every head does (the usual case within a rate), else on each head's slice, a
    contiguous view. Gradients live in buffers kept for the whole phase (``p.grad``, zeroed in place,
    never set to None), so the views hold."""

    def __init__(self, params: list[nn.Parameter], lr: list[float], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr = [float(v) for v in lr]
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.counts = [0] * len(self.lr)
        self._views()

    def _views(self) -> None:
        for p in self.params:
            if p.grad is None or p.grad.shape != p.shape:
                p.grad = torch.zeros_like(p)
        whole = [[p.data for p in self.params], [p.grad for p in self.params], self.exp_avg, self.exp_avg_sq]
        self.whole = whole
        self.views = [[[t[k] for t in tensors] for tensors in whole] for k in range(len(self.lr))]
        self._step_tensors: dict[int, Tensor] = {}

    def _step_tensor(self, count: int) -> Tensor:
        if count not in self._step_tensors:
            self._step_tensors[count] = torch.tensor(float(count), device=self.params[0].device)
        return self._step_tensors[count]

    @torch.no_grad()
    def step(self) -> None:
        groups: dict[tuple[float, int], list[int]] = {}
        for k, rate in enumerate(self.lr):
            self.counts[k] += 1
            if rate > 0:
                groups.setdefault((rate, self.counts[k]), []).append(k)
        for (rate, count), heads in groups.items():
            if len(heads) == len(self.lr):
                params, grads, avgs, squares = self.whole
            else:
                params, grads, avgs, squares = ([t for k in heads for t in self.views[k][i]]
                                                for i in range(4))
            self._update(params, grads, avgs, squares, rate, count)

    def _update(self, params: list[Tensor], grads: list[Tensor], avgs: list[Tensor], squares: list[Tensor],
                rate: float, count: int) -> None:
        beta1, beta2 = self.betas
        if _FUSED is not None:
            steps = [self._step_tensor(count)] * len(params)  # read by the kernel, never written
            _FUSED(params, grads, avgs, squares, [], steps, amsgrad=False, lr=rate, beta1=beta1, beta2=beta2,
                   weight_decay=self.weight_decay, eps=self.eps, maximize=False)
            return
        for p, g, avg, square in zip(params, grads, avgs, squares, strict=True):
            g = g.add(p, alpha=self.weight_decay) if self.weight_decay else g
            avg.lerp_(g, 1 - beta1)
            square.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (square.sqrt() / (1 - beta2**count) ** 0.5).add_(self.eps)
            p.addcdiv_(avg, denom, value=-rate / (1 - beta1**count))

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def restart(self, k: int) -> None:
        """A fresh Adam for head ``k``: zero moments, step count 0."""
        for tensor in (*self.views[k][2], *self.views[k][3]):
            tensor.zero_()
        self.counts[k] = 0

    def keep(self, index: list[int]) -> None:
        """Follow the model's ``keep``: the same heads, in the same order (parameters are re-read)."""
        rows = torch.tensor(index, dtype=torch.long, device=self.params[0].device)
        self.lr = [self.lr[k] for k in index]
        self.counts = [self.counts[k] for k in index]
        self.exp_avg = [a.index_select(0, rows) for a in self.exp_avg]
        self.exp_avg_sq = [a.index_select(0, rows) for a in self.exp_avg_sq]
        self._views()


def stacked_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def init_heads(d: int, hidden: list[list[int]], m: int, seeds: list[int]) -> list[StructuralMLP]:
    """Each head initialised exactly as a single run with its seed would (``torch.manual_seed`` then
    ``StructuralMLP``), so a head of a sweep starts where its own job would."""
    heads = []
    for widths, seed in zip(hidden, seeds, strict=True):
        torch.manual_seed(seed)
        heads.append(StructuralMLP(d, widths, m))
    return heads


__all__ = ["StackedAdam", "StackedGLAI", "StackedMLP", "glai_logits", "head_losses", "head_scores",
           "init_heads",
           "stacked_parameters"]
