"""Structural distances between activation patterns, a bit-packed gate cache and batched evaluation.

Path convention (the same as ``GLAIBlock``): a path is (i, j_1, ..., j_L, k) with i over x~ = [x; 1],
j_l over the augmented units g~_l = [g_l; 1] for l < L (the always-on unit carries hidden biases) and
j_L over the h_L real units of the last hidden layer. The input and output indices are never gated, so
the factors (d+1) and m cancel in every fraction and are left out: per sample the active paths number
prod_{l<L} (|g_l| + 1) * |g_L| out of prod_{l<L} (h_l + 1) * h_L. ``always_on=False`` drops the
always-on units (paths through real hidden units only) for callers who want that reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Gates = Sequence[Tensor]  # one (n, h_l) bool tensor per hidden layer


# ------------------------------------------------------------------------------------ distances

def unit_distance(previous: Gates, current: Gates) -> Tensor:
    """Normalised Hamming distance of the gate bits over all hidden units and samples (0-dim tensor)."""
    _check_pair(previous, current)
    changed = sum((a != b).sum(dtype=torch.float64) for a, b in zip(previous, current, strict=True))
    total = sum(a.numel() for a in previous)
    return changed / total


def _log_active(gates: Gates, always_on: bool) -> Tensor:
    """log of the number of active paths per sample, float64; -inf where no path is active."""
    last = len(gates) - 1
    log_count = None
    for level, gate in enumerate(gates):
        count = gate.sum(dim=1, dtype=torch.float64)
        if always_on and level < last:
            count = count + 1.0
        term = torch.log(count)
        log_count = term if log_count is None else log_count + term
    assert log_count is not None
    return log_count


def _log_total(widths: Sequence[int], always_on: bool) -> float:
    last = len(widths) - 1
    return sum(math.log(h + (1 if always_on and level < last else 0)) for level, h in enumerate(widths))


def path_distance(previous: Gates, current: Gates, always_on: bool = True) -> Tensor:
    """Fraction of (sample, path) pairs whose activity changed, without enumerating paths.

    Per sample: changed = |A_t| + |A_t-1| - 2 |A_t and A_t-1|, each count a product of per-layer counts.
    Everything is divided by the number of paths in log space (float64), so wide or deep blocks whose
    path counts overflow any float still give an exact-to-rounding fraction.
    """
    _check_pair(previous, current)
    log_total = _log_total([g.shape[1] for g in current], always_on)
    both = [a & b for a, b in zip(previous, current, strict=True)]
    frac = (torch.exp(_log_active(current, always_on) - log_total)
            + torch.exp(_log_active(previous, always_on) - log_total)
            - 2.0 * torch.exp(_log_active(both, always_on) - log_total))
    return frac.clamp_min(0.0).mean()


def structural_distances(previous: Gates, current: Gates) -> dict[str, float]:
    """Both distances with a single host synchronisation."""
    values = torch.stack([unit_distance(previous, current), path_distance(previous, current)]).tolist()
    return {"unit_distance": values[0], "path_distance": values[1]}


def _check_pair(previous: Gates, current: Gates) -> None:
    if len(previous) != len(current) or any(a.shape != b.shape for a, b in zip(previous, current)):  # noqa: B905
        raise ValueError("gate lists must have the same layers and shapes")


# ------------------------------------------------------------------------------------ gate cache

_BIT_WEIGHTS = [1 << k for k in range(8)]


def pack_bits(gate: Tensor) -> Tensor:
    """(n, h) bool -> (n, ceil(h/8)) uint8; bit k of byte c holds unit 8c + k (little-endian bits)."""
    n, h = gate.shape
    padded = F.pad(gate.to(torch.uint8), (0, (-h) % 8))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=gate.device)
    return (padded.view(n, -1, 8) * weights).sum(dim=2, dtype=torch.uint8)


def unpack_bits(packed: Tensor, width: int) -> Tensor:
    """Inverse of ``pack_bits``: (n, ceil(h/8)) uint8 -> (n, h) bool."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.view(packed.shape[0], -1)[:, :width].bool()


DENSE_GATE_BYTES = 512 * 1024**2  # below this the cache also keeps the gates unpacked, as float32


class GateCache:
    """Gates of a frozen structure for every sample, computed once and kept bit-packed on the device.

    With S frozen the gates never change, so phase 2 pays for S's forward once instead of every epoch,
    and packing keeps the cache at sum(h_l)/8 bytes per sample. When the unpacked float32 copy is small
    (N * sum(h_l) * 4 bytes under ``dense_bytes``: 6 MB for 60k samples and 26 units) it is kept too,
    so a training step gathers ready-made float gates instead of unpacking bits and converting them.
    """

    def __init__(self, packed: list[Tensor], widths: list[int], dense: list[Tensor] | None = None) -> None:
        self.packed, self.widths, self.dense = packed, widths, dense

    @classmethod
    @torch.no_grad()
    def build(cls, structure: nn.Module, x: Tensor, chunk: int = 8192,
              dense_bytes: int = DENSE_GATE_BYTES) -> GateCache:
        parts: list[list[Tensor]] = [[] for _ in structure.hidden]
        for start in range(0, x.shape[0], chunk):
            for level, gate in enumerate(structure.gates(x[start:start + chunk])):
                parts[level].append(pack_bits(gate))
        packed = [torch.cat(p) for p in parts]
        widths = list(structure.hidden)
        dense = None
        if x.shape[0] * sum(widths) * 4 <= dense_bytes:
            dense = [unpack_bits(p, w).to(x.dtype if x.is_floating_point() else torch.float32)
                     for p, w in zip(packed, widths, strict=True)]
        return cls(packed, widths, dense)

    def __len__(self) -> int:
        return self.packed[0].shape[0]

    def take(self, index: Tensor | slice, gather: Callable[[int, Tensor, Tensor], Tensor] | None = None,
             ) -> list[Tensor]:
        """Gates of the selected samples: float 0/1 from the dense copy, else bool unpacked from bits.

        ``gather(slot, source, index)`` (the training loop's ``BatchGather``) replaces ``source[index]``
        for tensor indices, so per-step gathers can reuse buffers.
        """
        if self.dense is not None:
            if gather is not None and isinstance(index, Tensor):
                return [gather(level, g, index) for level, g in enumerate(self.dense)]
            return [g[index] for g in self.dense]
        return [unpack_bits(p[index], w) for p, w in zip(self.packed, self.widths, strict=True)]

    def head(self, n: int) -> GateCache:
        """The cache of the first ``n`` samples (views, no copy)."""
        dense = None if self.dense is None else [g[:n] for g in self.dense]
        return GateCache([p[:n] for p in self.packed], self.widths, dense)

    def frequency(self, chunk: int = 65536) -> list[Tensor]:
        """P[g = 1] per hidden unit and layer (float32), e.g. for path-norm pruning scores."""
        totals = [torch.zeros(w, dtype=torch.float64, device=p.device) for p, w in
                  zip(self.packed, self.widths, strict=True)]
        for start in range(0, len(self), chunk):
            for total, gate in zip(totals, self.take(slice(start, start + chunk)), strict=True):
                total += gate.sum(dim=0, dtype=torch.float64)
        return [(t / len(self)).float() for t in totals]


# ------------------------------------------------------------------------------------ evaluation

def logits(model: nn.Module, x: Tensor, gates: list[Tensor] | None = None) -> Tensor:
    """Forward with cached gates when given (GLAI blocks), plain forward otherwise."""
    return model(x) if gates is None else model(x, gates=gates)


@torch.no_grad()
def evaluate_sums(model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
                  gates: GateCache | None = None) -> Tensor:
    """[summed cross-entropy, correct count, n] as a float64 device tensor: no host sync inside."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        part = slice(start, start + batch_size)
        out = logits(model, x[part], None if gates is None else gates.take(part))
        sums[0] += F.cross_entropy(out, y[part], reduction="sum").double()
        sums[1] += (out.argmax(dim=1) == y[part]).sum()
    sums[2] = x.shape[0]
    model.train(was_training)
    return sums


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096,
             gates: GateCache | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) with one host synchronisation."""
    loss, correct, n = evaluate_sums(model, x, y, batch_size, gates).tolist()
    return loss / n, correct / n
