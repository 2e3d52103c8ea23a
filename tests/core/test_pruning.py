"""Path-norm pruning: exactness of structured pruning, mask semantics, and accuracy on real data."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from glai_core.artifacts import load_model, save_model
from glai_core.data import builtin, train_val_split
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.preprocess import Standardizer
from glai_core.prune import (
    PruneResult,
    gate_frequency,
    prune_structured,
    prune_unstructured,
    pruning_sweep,
    trainable_params,
    unit_contribution_moments,
    unit_scores,
)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny models: one thread is several times faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _block(hidden: list[int], dtype: torch.dtype = torch.float64, seed: int = 0) -> GLAIBlock:
    torch.manual_seed(seed)
    block = GLAIBlock.from_structure(StructuralMLP(6, hidden, 3).to(dtype))
    with torch.no_grad():
        block.theta.add_(0.05 * torch.randn_like(block.theta))  # GLAI weights, no longer S's products
    return block


def _x(dtype: torch.dtype = torch.float64, n: int = 400) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(1)).to(dtype)


def _zeroed(block: GLAIBlock, removed: torch.Tensor) -> GLAIBlock:
    """The original block with every path through the removed last-layer units set to zero."""
    reference = copy.deepcopy(block)
    with torch.no_grad():
        reference.theta[:, removed] = 0.0
    return reference


def _removed(scores: torch.Tensor, pruned: GLAIBlock) -> torch.Tensor:
    return torch.argsort(scores, descending=True, stable=True)[pruned.hidden[-1] :]


# ----------------------------------------------------------------------------------------- exactness


def test_gate_frequency_is_the_mean_of_the_gates() -> None:
    block, x = _block([5, 7]), _x()
    frequencies = gate_frequency(block.structure, x.numpy(), batch_size=64)
    expected = [g.double().mean(dim=0) for g in block.structure.gates(x)]
    assert [f.shape for f in frequencies] == [(5,), (7,)]
    for got, want in zip(frequencies, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-12)


def test_static_score_is_the_path_norm_times_the_firing_rate() -> None:
    block, x = _block([8]), _x()
    frequency = gate_frequency(block, x)
    scores = unit_scores(block, frequency)
    for j in range(8):
        a_j = block.theta[:, j, :]  # A_j in R^{m x (d+1)}
        assert scores[j].item() == pytest.approx(torch.linalg.norm(a_j).item() * frequency[0][j].item())


@pytest.mark.parametrize("hidden", [[12], [6, 8], [4, 5, 8]], ids=["L1", "L2", "L3"])
def test_structured_pruning_is_smaller_and_equals_the_zeroed_original(hidden: list[int]) -> None:
    block, x = _block(hidden), _x()
    # Exactness must hold for any ranking; random scores also remove units that fire (the static score
    # would remove dead units first in this small random net, which changes nothing).
    scores = torch.rand(hidden[-1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pruned = prune_structured(block, 0.5, scores)
    removed = _removed(scores, pruned)
    assert pruned.hidden == [*hidden[:-1], hidden[-1] - hidden[-1] // 2]
    assert (
        pruned.theta.shape[1] == pruned.hidden[-1]
        and pruned.structure.layers[-1].weight.shape[1] == pruned.hidden[-1]
    )
    assert pruned.theta.numel() < block.theta.numel()
    assert sum(p.numel() for p in pruned.structure.parameters()) < sum(
        p.numel() for p in block.structure.parameters()
    )
    with torch.no_grad():
        assert torch.allclose(pruned(x), _zeroed(block, removed)(x), rtol=0, atol=1e-12)
        assert not torch.allclose(pruned(x), block(x), atol=1e-3)  # something was really removed
    assert not pruned.structure.layers[0].weight.requires_grad and pruned.theta.requires_grad


def test_structured_pruning_in_float32_matches_to_rounding_and_keeps_the_mask() -> None:
    block, x = _block([6, 9], torch.float32), _x(torch.float32)
    block.set_theta_mask(
        (torch.rand(block.theta.shape, generator=torch.Generator().manual_seed(2)) > 0.3).float()
    )
    scores = unit_scores(block, gate_frequency(block, x))
    pruned = prune_structured(block, 0.4, scores)
    assert pruned.theta_mask is not None and pruned.theta_mask.shape == pruned.theta.shape
    with torch.no_grad():
        expected = _zeroed(block, _removed(scores, pruned))(x)
        assert torch.allclose(pruned(x), expected, atol=1e-5)
        assert torch.equal(pruned(x).argmax(1), expected.argmax(1))


def test_compensation_folds_the_removed_units_mean_into_the_bias() -> None:
    block, x = _block([5, 10]), _x()
    mean, energy = unit_contribution_moments(block, x, batch_size=128)
    with torch.no_grad():
        assert torch.allclose(mean.sum(dim=0) + block.bias, block(x).mean(dim=0), atol=1e-12)
    assert energy.shape == (10,) and bool((energy >= 0).all())
    assert torch.allclose(unit_scores(block, None, x), energy, rtol=1e-9, atol=1e-12)
    pruned = prune_structured(block, 0.3, energy, compensation=mean)
    removed = _removed(energy, pruned)
    with torch.no_grad():
        expected = _zeroed(block, removed)(x) + mean[removed].sum(dim=0)
        assert torch.allclose(pruned(x), expected, atol=1e-12)


def test_sparsity_edges() -> None:
    block, x = _block([8]), _x()
    scores = unit_scores(block, gate_frequency(block, x))
    same = prune_structured(block, 0.0, scores)
    with torch.no_grad():
        assert same.hidden == [8] and torch.allclose(same(x), block(x), atol=1e-12)
    assert prune_structured(block, 0.99, scores).hidden == [1]
    with pytest.raises(ValueError, match="sparsity"):
        prune_structured(block, 1.0, scores)
    with pytest.raises(ValueError, match="scores"):
        prune_structured(block, 0.5, scores[:4])


@pytest.mark.parametrize("with_activity", [False, True])
def test_unstructured_pruning_masks_the_weakest_paths(with_activity: bool) -> None:
    block, x = _block([4, 5]), _x()
    frequency = gate_frequency(block, x) if with_activity else None
    original = block.theta.detach().clone()
    pruned = prune_unstructured(block, 0.6, frequency)
    mask = pruned.theta_mask
    assert int((mask == 0).sum()) == round(0.6 * block.theta.numel())
    assert trainable_params(pruned) == int(mask.sum()) + 3
    assert torch.equal(block.theta, original) and block.theta_mask is None  # the input is untouched
    score = original.abs()
    if with_activity:  # product of the units' firing rates along each path (always-on units count 1)
        g1 = torch.cat([frequency[0], frequency[0].new_ones(1)])
        score = score * frequency[1].view(1, -1, 1, 1) * g1.view(1, 1, -1, 1)
    assert score[mask == 0].max() <= score[mask == 1].min()
    manual = copy.deepcopy(block)
    with torch.no_grad():
        manual.theta.mul_(mask)
        assert torch.allclose(pruned(x), manual(x), atol=1e-12)


def test_pruned_models_survive_export(tmp_path: Path) -> None:
    block, x = _block([6, 7], torch.float32), _x(torch.float32)
    structured = prune_structured(block, 0.5, unit_scores(block, gate_frequency(block, x)))
    unstructured = prune_unstructured(block, 0.5)
    for name, model in (("s", structured), ("u", unstructured)):
        loaded, meta = load_model(save_model(tmp_path / f"{name}.safetensors", model, {}))
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
        assert meta["architecture"]["hidden"] == model.hidden


# ------------------------------------------------------------------------------------------ on digits


@pytest.fixture(scope="module")
def digits() -> dict:
    """S trained briefly with Adam on sklearn digits (64 -> 32 -> 10), and its warm-started GLAI block."""
    data = train_val_split(builtin("digits"), 0.25, seed=0)
    scaler = Standardizer.fit(data.x)
    x, y = scaler.apply(torch.from_numpy(data.x)), torch.from_numpy(data.y)
    x_val, y_val = scaler.apply(torch.from_numpy(data.x_val)), torch.from_numpy(data.y_val)
    torch.manual_seed(0)
    structure = StructuralMLP(64, [32], 10)
    optimizer = torch.optim.Adam(structure.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = torch.randint(0, x.shape[0], (256,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(structure(x[batch]), y[batch]).backward()
        optimizer.step()
    block = GLAIBlock.from_structure(structure)

    @torch.no_grad()
    def evaluate(model: GLAIBlock) -> float:
        return (model(x_val).argmax(1) == y_val).double().mean().item()

    def finetune(model: GLAIBlock, steps: int = 40) -> GLAIBlock:
        gates = model.structure.gates(x)
        optimizer = torch.optim.Adam([model.theta, model.bias], lr=1e-3)
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model(x, gates), y).backward()
            optimizer.step()
        return model

    return {
        "block": block,
        "x": x,
        "evaluate": evaluate,
        "finetune": finetune,
        "frequency": gate_frequency(block, x),
        "accuracy": evaluate(block),
    }


def test_half_the_units_pruned_and_finetuned_stay_within_3_points(digits: dict) -> None:
    """Spec scoring (||A_j|| * P[g_j = 1]), 50% of hidden units, 40 Adam steps on Theta: <= 3 points lost."""
    assert digits["accuracy"] > 0.93
    (result,) = pruning_sweep(
        digits["block"], [0.5], True, digits["finetune"], digits["evaluate"], digits["frequency"]
    )
    assert result.model.hidden == [16] and result.model.theta.numel() == digits["block"].theta.numel() // 2
    assert result.accuracy >= digits["accuracy"] - 0.03
    assert result.accuracy >= result.accuracy_before_finetune


def test_data_weighted_scores_with_bias_fold_beat_the_static_score(digits: dict) -> None:
    """Before fine-tuning: measured 4.7 points lost (data-weighted) vs 27 (static) at 50% on digits."""
    static, weighted = (
        pruning_sweep(digits["block"], [0.5], True, None, digits["evaluate"], digits["frequency"], **kwargs)[
            0
        ]
        for kwargs in ({}, {"x": digits["x"]})
    )
    assert weighted.accuracy >= digits["accuracy"] - 0.10
    assert weighted.accuracy > static.accuracy + 0.05


def test_sweep_reports_every_level_and_never_keeps_a_worse_finetune(digits: dict) -> None:
    seen: list[tuple[int, PruneResult]] = []

    def ruin(model: GLAIBlock) -> GLAIBlock:
        with torch.no_grad():
            model.theta.zero_()
        return model

    results = pruning_sweep(
        digits["block"],
        [0.25, 0.5, 0.9],
        False,
        ruin,
        digits["evaluate"],
        digits["frequency"],
        on_result=lambda i, r: seen.append((i, r)),
    )
    assert [r.sparsity for r in results] == [0.25, 0.5, 0.9] and [i for i, _ in seen] == [0, 1, 2]
    params = [r.trainable_params for r in results]
    assert params == sorted(params, reverse=True) and params[0] < trainable_params(digits["block"])
    for result in results:
        assert result.accuracy == result.accuracy_before_finetune  # the ruined fine-tune was rejected
        assert result.model.theta.abs().sum() > 0
    assert results[0].accuracy >= digits["accuracy"] - 0.02  # 25% of the weakest path weights barely matter


def test_structured_sweep_needs_frequencies_or_inputs(digits: dict) -> None:
    with pytest.raises(ValueError, match="gate frequencies or inputs"):
        pruning_sweep(digits["block"], [0.5], True, None, digits["evaluate"], None)
