"""The GLAI block, its structural network and the parameter-matched MLP, in one readable file.

Notation follows ``glai-spec.md``: input x in R^d, x~ = [x; 1], hidden widths h_1..h_L, m outputs.

* ``StructuralMLP`` (S) is a plain ReLU MLP. Its gates g_l(x) = 1[z_l(x) > 0] are the *structure*.
* ``GLAIBlock`` keeps a frozen S for the gates and owns the path weights Theta and the output bias c:

      y_k(x) = c_k + sum_{j_L, ..., j_1, i} Theta[k, j_L, ..., j_1, i] * g~_L[j_L] ... g~_1[j_1] * x~_i

  Gate vectors of layers 1..L-1 are augmented with an always-on unit (g~_l = [g_l; 1]) so that the
  paths starting at hidden biases b_2..b_L are represented; the last layer's bias is c. For one hidden
  layer this is exactly the spec's y = c + sum_j g_j (A_j x~), with m*h*(d+1) path weights.

Initialising Theta from S (``GLAIBlock.from_structure(S, warm_start=True)``) makes the block compute
S's function exactly (up to float rounding): the product of S's weights along each path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class StructuralMLP(nn.Module):
    """A ReLU MLP d -> h_1 -> ... -> h_L -> m. Also serves as the parameter-matched MLP baseline."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("at least one hidden layer is required")
        widths = [in_features, *hidden, out_features]
        self.in_features, self.hidden, self.out_features = in_features, list(hidden), out_features
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)

    @torch.no_grad()
    def gates(self, x: Tensor) -> list[Tensor]:
        """Boolean activation pattern of every hidden layer: the structural knowledge."""
        out = []
        for layer in self.layers[:-1]:
            z = layer(x)
            out.append(z > 0)
            x = torch.relu(z)
        return out


def _augment(gate: Tensor) -> Tensor:
    """Append the always-on unit to a (batch, h) gate matrix."""
    return torch.cat([gate, gate.new_ones(gate.shape[0], 1)], dim=1)


def theta_shape(in_features: int, hidden: list[int], out_features: int) -> tuple[int, ...]:
    """Shape of Theta: (m, h_L, h_{L-1}+1, ..., h_1+1, d+1)."""
    inner = tuple(h + 1 for h in reversed(hidden[:-1]))
    return (out_features, hidden[-1], *inner, in_features + 1)


class GLAIBlock(nn.Module):
    """Path-weight block gated by a frozen structural network.

    ``structure`` is stored as a frozen sub-module (no gradients, eval only): it only decides which
    paths are active. Gates may also be passed in precomputed (``forward(x, gates=...)``), which is how
    phase 2 reuses gates cached once per sample.
    """

    def __init__(self, structure: StructuralMLP) -> None:
        super().__init__()
        self.structure = structure
        self.structure.requires_grad_(False)
        self.in_features, self.hidden, self.out_features = (
            structure.in_features, list(structure.hidden), structure.out_features)
        shape = theta_shape(self.in_features, self.hidden, self.out_features)
        self.theta = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(self.out_features))
        self.theta_mask: Tensor | None
        # A (None) buffer from the start, so set_theta_mask can register it: set by unstructured pruning.
        self.register_buffer("theta_mask", None)

    def set_theta_mask(self, mask: Tensor | None) -> None:
        """Fix pruned paths at zero: the mask is a buffer, saved with the model and applied in forward."""
        if mask is None:
            self.theta_mask = None
            return
        self.register_buffer("theta_mask", mask.to(device=self.theta.device, dtype=self.theta.dtype))
        with torch.no_grad():
            self.theta.mul_(self.theta_mask)

    def effective_theta(self) -> Tensor:
        return self.theta if self.theta_mask is None else self.theta * self.theta_mask

    @classmethod
    def from_structure(cls, structure: StructuralMLP, warm_start: bool = True) -> GLAIBlock:
        reference = next(structure.parameters())
        block = cls(structure).to(device=reference.device, dtype=reference.dtype)
        if warm_start:
            block.load_paths_from_structure()
        return block

    @torch.no_grad()
    def load_paths_from_structure(self) -> None:
        """Theta_p = product of S's weights along p (bias paths through always-on units); c = last bias."""
        layers = self.structure.layers
        # W^_l = [[W_l, b_l], [0, 1]] for l < L keeps the always-on unit alive; the last hidden layer
        # has no always-on unit, so its map is [W_L, b_L].
        first = torch.cat([layers[0].weight, layers[0].bias[:, None]], dim=1)
        if len(self.hidden) > 1:
            first = _with_passthrough(first)
        paths = first  # (h_1[+1], d+1): paths from x~ to layer-1 units
        for index, layer in enumerate(layers[1:-1], start=1):
            w_hat = torch.cat([layer.weight, layer.bias[:, None]], dim=1)
            if index < len(self.hidden) - 1:
                w_hat = _with_passthrough(w_hat)
            # paths[j_l, ..., i] -> paths[j_{l+1}, j_l, ..., i]
            paths = w_hat[(...,) + (None,) * (paths.dim() - 1)] * paths.unsqueeze(0)
        head = layers[-1].weight  # (m, h_L)
        self.theta.copy_(head[(...,) + (None,) * (paths.dim() - 1)] * paths.unsqueeze(0))
        self.bias.copy_(layers[-1].bias)

    def train(self, mode: bool = True) -> GLAIBlock:
        super().train(mode)
        self.structure.eval()  # frozen: never in training mode
        return self

    def forward(self, x: Tensor, gates: list[Tensor] | None = None) -> Tensor:
        if gates is None:
            gates = self.structure.gates(x)
        batch = x.shape[0]
        # Contract the input index first: u[b, k, j_L, ..., j_1] = sum_i Theta[..., i] x~[b, i]. The
        # constant input's column enters as addmm's bias, so x~ = [x; 1] is never copied per step.
        theta = self.effective_theta()
        flat = theta.reshape(-1, self.in_features + 1)
        u = torch.addmm(flat[:, -1], x, flat[:, :-1].T).view(batch, *theta.shape[:-1])
        if u.dtype in (torch.bfloat16, torch.float16):
            u = u.float()  # under autocast: mask-and-sum in fp32, so deep blocks do not compound rounding
        # Then mask-and-sum one hidden layer at a time, innermost (layer 1) first.
        for level, gate in enumerate(gates):
            g = gate.to(u.dtype)
            if level < len(gates) - 1:
                g = _augment(g)
            u = (u * g.view(batch, *([1] * (u.dim() - 2)), g.shape[1])).sum(dim=-1)
        return u.view(batch, self.out_features) + self.bias


def _with_passthrough(w_hat: Tensor) -> Tensor:
    """Add the always-on unit's row [0, ..., 0, 1] below an augmented weight matrix."""
    row = w_hat.new_zeros(1, w_hat.shape[1])
    row[0, -1] = 1.0
    return torch.cat([w_hat, row], dim=0)


# ----------------------------------------------------------------------------------- parameter counts

def mlp_param_count(in_features: int, hidden: list[int], out_features: int) -> int:
    widths = [in_features, *hidden, out_features]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


def glai_trainable_count(in_features: int, hidden: list[int], out_features: int) -> int:
    return math.prod(theta_shape(in_features, hidden, out_features)) + out_features


@dataclass(frozen=True)
class ParameterMatch:
    """How GLAI's widths were derived from a reference MLP, with every count a report needs."""

    reference_hidden: list[int]
    glai_hidden: list[int]
    reduction_factor: float
    mlp_params: int
    glai_trainable_params: int
    structure_params: int
    parameter_matched: bool = True  # False when r was given or chosen by a rule other than matching


def match_parameters(in_features: int, reference_hidden: list[int], out_features: int,
                     reduction_factor: float | None = None) -> ParameterMatch:
    """GLAI widths h'_l = max(1, round(h_l / r)).

    With ``reduction_factor=None`` r is chosen so that GLAI's trainable parameters (Theta and c) match
    the reference MLP's as closely as possible; for one hidden layer that is the spec's closed form
    h' = (P_mlp - m) / ((d+1) m), rounded.
    """
    p_mlp = mlp_param_count(in_features, reference_hidden, out_features)
    matched = reduction_factor is None

    def widths(r: float) -> list[int]:
        return [max(1, round(h / r)) for h in reference_hidden]

    if reduction_factor is None:
        if len(reference_hidden) == 1:
            h = max(1, round((p_mlp - out_features) / ((in_features + 1) * out_features)))
            reduction_factor = reference_hidden[0] / h
        else:
            # glai_trainable_count decreases monotonically in r: bisect on log r.
            lo, hi = 1e-3, float(max(reference_hidden))
            for _ in range(100):
                mid = math.sqrt(lo * hi)
                if glai_trainable_count(in_features, widths(mid), out_features) > p_mlp:
                    lo = mid
                else:
                    hi = mid
            def mismatch(r: float) -> int:
                return abs(glai_trainable_count(in_features, widths(r), out_features) - p_mlp)

            reduction_factor = min((lo, hi), key=mismatch)
    if reduction_factor <= 0:
        raise ValueError("reduction_factor must be positive")
    hidden = widths(reduction_factor)
    return ParameterMatch(parameter_matched=matched,
        reference_hidden=list(reference_hidden), glai_hidden=hidden, reduction_factor=float(reduction_factor),
        mlp_params=p_mlp, glai_trainable_params=glai_trainable_count(in_features, hidden, out_features),
        structure_params=mlp_param_count(in_features, hidden, out_features))
