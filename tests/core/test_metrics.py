"""Structural distances against brute-force path enumeration, the gate cache and batched evaluation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from glai_core.metrics import (
    GateCache,
    evaluate,
    pack_bits,
    path_distance,
    structural_distances,
    unit_distance,
    unpack_bits,
)
from glai_core.model import GLAIBlock, StructuralMLP

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_gates(n: int, widths: list[int], p: float, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(n, h, generator=gen) < p for h in widths]


def brute_force_path_distance(prev: list[torch.Tensor], cur: list[torch.Tensor], always_on: bool) -> float:
    """Enumerate every (sample, path) pair: paths run through one unit per layer, always-on units
    (layers 1..L-1) included when ``always_on``; input and output indices cancel in the fraction."""
    n, last = prev[0].shape[0], len(prev) - 1

    def augmented(gates: list[torch.Tensor], b: int) -> list[list[bool]]:
        rows = []
        for level, g in enumerate(gates):
            row = g[b].tolist()
            rows.append(row + [True] if always_on and level < last else row)
        return rows

    changed = total = 0
    for b in range(n):
        a_prev, a_cur = augmented(prev, b), augmented(cur, b)
        for path in itertools.product(*[range(len(r)) for r in a_prev]):
            on_prev = all(a_prev[level][j] for level, j in enumerate(path))
            on_cur = all(a_cur[level][j] for level, j in enumerate(path))
            changed += on_prev != on_cur
            total += 1
    return changed / total


@pytest.mark.parametrize("widths", [[5], [3, 4], [4, 2, 3]])
@pytest.mark.parametrize("always_on", [True, False])
def test_path_distance_matches_enumeration(widths: list[int], always_on: bool) -> None:
    prev, cur = random_gates(7, widths, 0.6, 1), random_gates(7, widths, 0.6, 2)
    expected = brute_force_path_distance(prev, cur, always_on)
    assert expected > 0
    assert float(path_distance(prev, cur, always_on)) == pytest.approx(expected, rel=1e-12)


def test_hand_made_example() -> None:
    """Two samples, one hidden layer of two units then one of one unit (augmented first layer: 3 units).

    Sample 0: layer 1 goes [1,0] -> [1,1]: active paths 2*1 -> 3*1 (of 3), changed 1.
    Sample 1: layer 2 goes [1] -> [0]: paths 1*1 -> 0 (of 3), changed 1. Path distance = 2 / 6.
    Unit distance: 2 flipped bits of 2 * 3 = 1/3.
    """
    prev = [torch.tensor([[1, 0], [0, 0]], dtype=torch.bool), torch.tensor([[1], [1]], dtype=torch.bool)]
    cur = [torch.tensor([[1, 1], [0, 0]], dtype=torch.bool), torch.tensor([[1], [0]], dtype=torch.bool)]
    assert float(path_distance(prev, cur)) == pytest.approx(2 / 6)
    assert float(unit_distance(prev, cur)) == pytest.approx(1 / 3)


def test_identical_gates_give_zero() -> None:
    gates = random_gates(50, [30, 20, 10], 0.5, 3)
    same = [g.clone() for g in gates]
    assert structural_distances(gates, same) == {"unit_distance": 0.0, "path_distance": 0.0}


def test_one_layer_path_distance_equals_unit_distance() -> None:
    prev, cur = random_gates(40, [17], 0.5, 4), random_gates(40, [17], 0.5, 5)
    assert float(path_distance(prev, cur)) == pytest.approx(float(unit_distance(prev, cur)), rel=1e-12)


def test_path_distance_does_not_overflow() -> None:
    """300 layers of 100 units: 100^300 paths overflow float64; the log-space counts do not."""
    widths = [100] * 300
    all_on = [torch.ones(3, h, dtype=torch.bool) for h in widths]
    all_off = [torch.zeros(3, h, dtype=torch.bool) for h in widths]
    flipped = [g.clone() for g in all_on]
    flipped[0][:, :50] = False  # half of layer 1's units off: half the paths change
    assert float(path_distance(all_on, all_off, always_on=False)) == 1.0
    assert float(path_distance(all_on, flipped, always_on=False)) == pytest.approx(0.5)
    value = float(path_distance(random_gates(3, widths, 0.9, 6), random_gates(3, widths, 0.9, 7)))
    assert 0.0 <= value <= 1.0


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError):
        path_distance(random_gates(3, [4], 0.5, 0), random_gates(3, [5], 0.5, 0))


@pytest.mark.parametrize("width", [1, 8, 13, 64])
def test_pack_unpack_roundtrip(width: int) -> None:
    (gate,) = random_gates(37, [width], 0.5, width)
    packed = pack_bits(gate)
    assert packed.dtype == torch.uint8 and packed.shape == (37, (width + 7) // 8)
    assert torch.equal(unpack_bits(packed, width), gate)


def test_gate_cache_matches_structure() -> None:
    torch.manual_seed(0)
    structure = StructuralMLP(6, [9, 5], 3)
    x = torch.randn(100, 6)
    cache = GateCache.build(structure, x, chunk=33)
    index = torch.tensor([5, 0, 99, 42])
    for cached, direct in zip(cache.take(index), structure.gates(x[index]), strict=True):
        assert torch.equal(cached.bool(), direct)
    for freq, direct in zip(cache.frequency(chunk=17), structure.gates(x), strict=True):
        assert torch.allclose(freq, direct.float().mean(dim=0))


def test_dense_and_packed_gate_caches_agree() -> None:
    """The fast path (unpacked float copy) and the bit-packed cache give the same gates and forward."""
    torch.manual_seed(0)
    structure = StructuralMLP(6, [9, 5], 3)
    block = GLAIBlock.from_structure(structure)
    x = torch.randn(100, 6)
    dense, packed = GateCache.build(structure, x), GateCache.build(structure, x, dense_bytes=0)
    assert dense.dense is not None and packed.dense is None
    index = torch.tensor([3, 1, 77])
    for a, b in zip(dense.take(index), packed.take(index), strict=True):
        assert a.dtype == torch.float32 and b.dtype == torch.bool and torch.equal(a.bool(), b)
    assert torch.equal(block(x[index], gates=dense.take(index)), block(x[index], gates=packed.take(index)))
    head = dense.head(10)
    assert len(head) == 10 and torch.equal(head.take(slice(None))[0], dense.take(slice(0, 10))[0])


def test_evaluate_matches_direct_computation() -> None:
    torch.manual_seed(1)
    structure = StructuralMLP(4, [7], 3)
    block = GLAIBlock.from_structure(structure)
    x, y = torch.randn(250, 4), torch.randint(0, 3, (250,))
    out = structure(x)
    loss, acc = evaluate(structure, x, y, batch_size=64)
    assert loss == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-5)
    assert acc == pytest.approx(float((out.argmax(1) == y).float().mean()))
    cache = GateCache.build(structure, x)
    assert evaluate(block, x, y, batch_size=64, gates=cache)[1] == pytest.approx(acc)
