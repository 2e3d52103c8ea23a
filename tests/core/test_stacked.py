"""Stacked heads compute exactly what the heads compute one by one: outputs, gradients, Adam steps."""

from __future__ import annotations

import copy

import pytest
import torch

from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.stacked import StackedAdam, StackedGLAI, StackedMLP, head_losses, init_heads
from glai_core.stacked_steps import AutogradStackedStep, StackedStep, make_stacked_step

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("hidden", [[[5], [9], [7]], [[4, 6], [8, 3]]])
def test_stacked_mlps_match_each_head_in_outputs_and_gradients(hidden: list[list[int]]) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(17, 6), torch.randint(0, 3, (17,))
    heads = init_heads(6, hidden, 3, list(range(len(hidden))))
    stacked = StackedMLP.from_heads(heads)
    out = stacked(x)
    for k, head in enumerate(heads):
        torch.testing.assert_close(out[k], head(x))
        for got, expected in zip(stacked.gates(x), head.gates(x), strict=True):
            assert torch.equal(got[k, :, :expected.shape[1]], expected)
            assert not got[k, :, expected.shape[1]:].any()  # padded units never fire
    head_losses(out, y).sum().backward()
    for k, head in enumerate(heads):
        torch.nn.functional.cross_entropy(head(x), y).backward()
        for level, layer in enumerate(head.layers):
            rows, cols = layer.weight.shape
            torch.testing.assert_close(stacked.weights[level].grad[k, :rows, :cols], layer.weight.grad)
            assert torch.count_nonzero(stacked.weights[level].grad[k, rows:]) == 0
        torch.testing.assert_close(stacked.head(k)(x), head(x))


def test_stacked_adam_is_torch_adam_per_head_with_its_own_rate() -> None:
    torch.manual_seed(1)
    rates = [1e-3, 3e-2]
    heads = init_heads(4, [[5], [5]], 2, [0, 1])
    stacked = StackedMLP.from_heads(heads)
    optimizer = StackedAdam(list(stacked.parameters()), rates, weight_decay=0.01)
    singles = [torch.optim.Adam(h.parameters(), lr=r, weight_decay=0.01) for h, r in zip(heads, rates,
                                                                                          strict=True)]
    step = AutogradStackedStep(stacked, optimizer)
    for _ in range(3):
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        step(x, y, None)
        for head, single in zip(heads, singles, strict=True):
            single.zero_grad()
            torch.nn.functional.cross_entropy(head(x), y).backward()
            single.step()
    for k, head in enumerate(heads):
        for got, expected in zip(stacked.head(k).parameters(), head.parameters(), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    optimizer.restart(0)
    assert optimizer.counts == [0, 3]
    stacked.keep(torch.tensor([1]))
    optimizer.keep([1])
    assert stacked.heads == 1 and optimizer.lr == [rates[1]]
    torch.testing.assert_close(stacked.head(0)(x), heads[1](x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden", [[[5], [8]], [[3, 4], [5, 2], [4, 4]]])
def test_stacked_glai_matches_each_block_on_cached_gates(hidden: list[list[int]]) -> None:
    torch.manual_seed(2)
    x = torch.randn(11, 6)
    blocks = [GLAIBlock.from_structure(s) for s in init_heads(6, hidden, 3, [3, 4, 5][:len(hidden)])]
    stacked = StackedGLAI.from_blocks(blocks)
    structures = StackedMLP.from_heads([b.structure for b in blocks])
    out = stacked(x, structures.gates(x))
    for k, block in enumerate(blocks):
        torch.testing.assert_close(out[k], block(x), rtol=1e-5, atol=1e-6)
        theta, bias = stacked.head_theta(k)
        assert torch.equal(theta, block.theta) and torch.equal(bias, block.bias)
    assert isinstance(structures.head(0), StructuralMLP)


@pytest.mark.parametrize("kind", ["mlp", "glai"])
def test_the_hand_written_stacked_step_takes_autograds_step(kind: str) -> None:
    """Two copies of the same heads, one stepped by hand and one by autograd, stay equal."""
    torch.manual_seed(3)
    structures = init_heads(5, [[4], [7], [6]], 3, [0, 1, 2])
    if kind == "mlp":
        a, b = StackedMLP.from_heads(structures), StackedMLP.from_heads(structures)
        gates_of = None
    else:
        blocks = [GLAIBlock.from_structure(s) for s in structures]
        a, b = StackedGLAI.from_blocks(blocks), StackedGLAI.from_blocks(blocks)
        gates_of = StackedMLP.from_heads(structures).gates
    rates = [1e-3, 5e-3, 2e-2]
    hand = make_stacked_step(a, StackedAdam(list(a.parameters()), rates))
    reference = AutogradStackedStep(b, StackedAdam(list(b.parameters()), rates))
    assert isinstance(hand, StackedStep)
    for _ in range(4):
        x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
        gates = None if gates_of is None else gates_of(x)
        torch.testing.assert_close(hand(x, y, gates), reference(x, y, gates), rtol=1e-5, atol=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class _Frozen:
    """An optimiser that leaves the weights alone, so the step's gradients can be read."""

    def step(self, closure: object = None) -> None:
        return None


@pytest.mark.parametrize("kind", ["mlp", "glai"])
def test_the_bf16_stacked_step_is_each_heads_own_bf16_step(kind: str) -> None:
    """bf16 products where each head's own job computes in bf16 (the same small-layer rule), fp32 buffers:
    every head's gradients are its own ``HandWrittenStep``'s, up to bf16 rounding, and not fp32's."""
    from glai_core.steps import SMALL_LAYER, HandWrittenStep

    torch.manual_seed(5)
    d, width, m = 48, 40, 3
    assert d * width >= SMALL_LAYER > width * m  # the first layer in bf16, the MLP's output layer fp32
    structures = init_heads(d, [[width], [width]], m, [0, 1])
    x, y = torch.randn(64, d), torch.randint(0, m, (64,))
    if kind == "mlp":
        stacked, heads = StackedMLP.from_heads(structures), [StructuralMLP(d, [width], m) for _ in structures]
        for head, structure in zip(heads, structures, strict=True):
            head.load_state_dict(structure.state_dict())
        gates, own_gates = None, [None, None]
    else:
        heads = [GLAIBlock.from_structure(s) for s in structures]
        stacked = StackedGLAI.from_blocks(heads)
        gates = StackedMLP.from_heads(structures).gates(x)
        own_gates = [[g] for g in (s.gates(x)[0] for s in structures)]
    optimizer = StackedAdam(list(stacked.parameters()), [0.0, 0.0])
    step = make_stacked_step(stacked, optimizer, torch.bfloat16)
    twin = copy.deepcopy(stacked)
    fp32 = make_stacked_step(twin, StackedAdam(list(twin.parameters()), [0.0, 0.0]), None)
    loss = step(x, y, gates)
    for k, head in enumerate(heads):
        own = HandWrittenStep(head, torch.bfloat16)
        own_loss = own(x, y, own_gates[k], _Frozen())
        torch.testing.assert_close(loss[k], own_loss, rtol=1e-3, atol=1e-3)
        trainable = [p for p in head.parameters() if p.requires_grad]
        if kind == "mlp":
            stacked_grads = [p.grad[k] for pair in zip(stacked.weights, stacked.biases, strict=True)
                             for p in pair]
        else:
            stacked_grads = [stacked.theta.grad[k], stacked.bias.grad[k]]
        for got, expected in zip(stacked_grads, (p.grad for p in trainable), strict=True):
            torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-3)
    fp32(x, y, gates)
    reference = twin
    first = stacked.weights[0] if kind == "mlp" else stacked.theta
    first_fp32 = reference.weights[0] if kind == "mlp" else reference.theta
    assert not torch.equal(first.grad, first_fp32.grad)  # the products really ran in bf16
    torch.testing.assert_close(first.grad, first_fp32.grad, rtol=0.1, atol=2e-2)
    # a head leaves the stack (new storage): the bf16 copies follow it
    stacked.keep(torch.tensor([1]))
    optimizer.keep([1])
    torch.testing.assert_close(step(x, y, None if gates is None else [g[1:] for g in gates])[0],
                               HandWrittenStep(heads[1], torch.bfloat16)(x, y, own_gates[1], _Frozen()),
                               rtol=1e-3, atol=1e-3)


def test_deep_stacked_heads_step_under_autocast_in_a_bf16_job() -> None:
    """Two hidden layers take autograd's step; with bf16 it runs under autocast, as a deep head's job's
    ``AutogradStep``: the same update up to bf16 rounding, and not fp32's."""
    from glai_core.steps import AutogradStep

    torch.manual_seed(6)
    structures = init_heads(40, [[36, 30], [36, 30]], 3, [0, 1])
    x, y = torch.randn(32, 40), torch.randint(0, 3, (32,))
    stacked, twin = StackedMLP.from_heads(structures), StackedMLP.from_heads(structures)
    step = make_stacked_step(stacked, StackedAdam(list(stacked.parameters()), [1e-2, 1e-2]), torch.bfloat16)
    fp32 = make_stacked_step(twin, StackedAdam(list(twin.parameters()), [1e-2, 1e-2]))
    assert isinstance(step, AutogradStackedStep) and step.autocast == torch.bfloat16
    step(x, y, None)
    fp32(x, y, None)
    own = StructuralMLP(40, [36, 30], 3)
    own.load_state_dict(structures[1].state_dict())
    AutogradStep(own, torch.bfloat16)(x, y, None, torch.optim.Adam(own.parameters(), lr=1e-2))
    for got, expected in zip(stacked.head(1).parameters(), own.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    assert not torch.equal(stacked.weights[0].grad, twin.weights[0].grad)
