"""The hand-written steps give autograd's gradients, losses and Adam trajectories on real data."""

from __future__ import annotations

import copy

import pytest
import torch

from glai_core.hooks import Hooks
from glai_core.metrics import GateCache
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.steps import SMALL_LAYER, AutogradStep, HandWrittenStep, make_step, supports_hand_written
from glai_core.train import DeviceSet, FitSettings, fit, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _pair(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model and an identical copy: one for the reference step, one for the step under test."""
    return model, copy.deepcopy(model)


def _trained_structure(train: DeviceSet, hidden: list[int]) -> StructuralMLP:
    """A briefly trained S, so that gates are informative and a GLAI block starts from real paths."""
    torch.manual_seed(0)
    model = StructuralMLP(train.x.shape[1], hidden, 10)
    fit(model, train, train, FitSettings(epochs=2, lr=3e-3, batch_size=64, seed=0), Hooks(), "structural")
    return model


def _twins(digits_sets: tuple[DeviceSet, DeviceSet], kind: str,
           ) -> tuple[torch.nn.Module, torch.nn.Module, DeviceSet, DeviceSet]:
    """Two identical models of ``kind`` ("mlp" or "glai") and the sets they train on (with S's gates)."""
    train, val = digits_sets
    if kind == "mlp":
        torch.manual_seed(0)
        return (*_pair(StructuralMLP(64, [32], 10)), train, val)
    structure = _trained_structure(train, [20])
    return (GLAIBlock.from_structure(structure), GLAIBlock.from_structure(structure),
            train.with_gates(structure), val.with_gates(structure))


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in _trainable(model)]


class _NoStep(torch.optim.Optimizer):
    """Leaves the weights alone, so one call of a step shows its gradients only."""

    def __init__(self, params) -> None:  # noqa: ANN001
        super().__init__(list(params), {})

    def step(self, closure=None) -> None:  # noqa: ANN001
        return None


@pytest.mark.parametrize("hidden", [[32], [24, 16], [16, 12, 8]])
def test_mlp_gradients_and_loss_match_autograd(digits_sets: tuple[DeviceSet, DeviceSet],
                                               hidden: list[int]) -> None:
    train, _ = digits_sets
    torch.manual_seed(0)
    reference, ours = _pair(StructuralMLP(64, hidden, 10))
    x, y = train.x[:200], train.y[:200]
    ref_loss = AutogradStep(reference)(x, y, None, _NoStep(reference.parameters()))
    our_loss = HandWrittenStep(ours)(x, y, None, _NoStep(ours.parameters()))
    assert our_loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for got, want in zip(_grads(ours), _grads(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_glai_gradients_and_loss_match_autograd(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    train, _ = digits_sets
    structure = _trained_structure(train, [20])
    reference = GLAIBlock.from_structure(structure)
    ours = GLAIBlock.from_structure(structure)
    x, y = train.x[:300], train.y[:300]
    gates = GateCache.build(structure, x).take(slice(0, 300))
    ref_loss = AutogradStep(reference)(x, y, gates, _NoStep(_trainable(reference)))
    our_loss = HandWrittenStep(ours)(x, y, gates, _NoStep(_trainable(ours)))
    assert our_loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert ours.theta.grad.abs().sum() > 0  # a real gradient, not a zero buffer
    for got, want in zip(_grads(ours), _grads(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_buffers_are_overwritten_not_accumulated(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """No zero_grad between steps: the second batch's gradient must not contain the first's."""
    train, _ = digits_sets
    torch.manual_seed(0)
    reference, ours = _pair(StructuralMLP(64, [32], 10))
    step = HandWrittenStep(ours)
    step(train.x[:100], train.y[:100], None, _NoStep(ours.parameters()))
    step(train.x[100:200], train.y[100:200], None, _NoStep(ours.parameters()))
    AutogradStep(reference)(train.x[100:200], train.y[100:200], None, _NoStep(reference.parameters()))
    for got, want in zip(_grads(ours), _grads(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "glai"])
def test_adam_trajectories_match_over_many_steps(digits_sets: tuple[DeviceSet, DeviceSet], kind: str) -> None:
    """The whole loop (fit) with the hand-written step against fit with autograd's: same weights and
    validation accuracy after 3 epochs."""
    reference, ours, train_set, val_set = _twins(digits_sets, kind)
    assert isinstance(make_step(ours, None, gates_cached=True), HandWrittenStep)
    settings = FitSettings(epochs=3, lr=1e-3, batch_size=64, seed=2, keep_best=False)
    got = fit(ours, train_set, val_set, settings, Hooks(), "baseline")
    optimizer = make_optimizer(reference, settings.lr)
    step = AutogradStep(reference)
    generator = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.epochs):  # the loop's shuffles, by hand, with autograd
        order = torch.randperm(len(train_set), generator=generator)
        for start in range(0, len(train_set), settings.batch_size):
            index = order[start:start + settings.batch_size]
            gates = None if train_set.gates is None else train_set.gates.take(index)
            step(train_set.x[index], train_set.y[index], gates, optimizer)
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)
    assert all(p.grad is None for p in ours.parameters())  # buffers released at the end of the phase
    with torch.no_grad():
        gates = None if val_set.gates is None else val_set.gates.take(slice(0, len(val_set)))
        ref_out = reference(val_set.x) if gates is None else reference(val_set.x, gates=gates)
    accuracy = (ref_out.argmax(1) == val_set.y).float().mean().item()
    assert got.history[-1]["val_accuracy"] == pytest.approx(accuracy, abs=1e-3)


def test_hand_written_only_where_it_is_exact(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    train, _ = digits_sets
    structure = StructuralMLP(64, [20], 10)
    assert supports_hand_written(structure, None, gates_cached=False)
    assert supports_hand_written(structure, torch.bfloat16, gates_cached=False)  # mixed precision
    assert not supports_hand_written(structure, torch.float16, gates_cached=False)
    block = GLAIBlock.from_structure(structure)
    assert supports_hand_written(block, None, gates_cached=True)
    assert not supports_hand_written(block, None, gates_cached=False)  # gates computed on the fly
    block.set_theta_mask(torch.ones_like(block.theta))
    assert not supports_hand_written(block, None, gates_cached=True)  # pruned paths
    deep = GLAIBlock.from_structure(StructuralMLP(64, [8, 6], 10))
    assert not supports_hand_written(deep, None, gates_cached=True)
    assert isinstance(make_step(deep, None, gates_cached=True), AutogradStep)
    frozen = StructuralMLP(64, [20], 10)
    frozen.layers[0].requires_grad_(False)
    assert not supports_hand_written(frozen, None, gates_cached=False)
    with pytest.raises(ValueError, match="no hand-written step"):
        HandWrittenStep(deep)


# ------------------------------------------------------------------ bf16 mixed precision (autocast's)

@pytest.mark.parametrize("hidden", [[32], [24, 16]])
def test_bf16_mlp_step_matches_autograd_under_autocast(digits_sets: tuple[DeviceSet, DeviceSet],
                                                       hidden: list[int]) -> None:
    """bf16 products on bf16 copies, fp32 loss and gradient buffers: autocast's gradients, and far from
    fp32's only by bf16 rounding."""
    train, _ = digits_sets
    torch.manual_seed(0)
    reference, ours = _pair(StructuralMLP(64, hidden, 10))
    fp32 = copy.deepcopy(reference)
    x, y = train.x[:200], train.y[:200]
    ref_loss = AutogradStep(reference, torch.bfloat16)(x, y, None, _NoStep(reference.parameters()))
    step = HandWrittenStep(ours, torch.bfloat16)
    assert step.low is not None  # layers under SMALL_LAYER weights (here the later ones) stay fp32
    expected = [torch.bfloat16 if layer.weight.numel() >= SMALL_LAYER else torch.float32
                for layer in ours.layers for _ in range(2)]
    assert [w.dtype for w in step.low.weights()] == expected and expected[0] == torch.bfloat16
    assert expected[-1] == torch.float32
    our_loss = step(x, y, None, _NoStep(ours.parameters()))
    assert all(p.grad.dtype == torch.float32 for p in ours.parameters())  # Adam sees fp32 gradients
    assert our_loss.item() == pytest.approx(ref_loss.item(), rel=1e-3)
    for got, want in zip(_grads(ours), _grads(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)
    AutogradStep(fp32)(x, y, None, _NoStep(fp32.parameters()))
    weight_grad = ours.layers[0].weight.grad
    assert not torch.equal(weight_grad, fp32.layers[0].weight.grad)  # the products really ran in bf16
    torch.testing.assert_close(weight_grad, fp32.layers[0].weight.grad, rtol=5e-2, atol=5e-3)


def test_bf16_glai_step_matches_autograd_under_autocast(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    train, _ = digits_sets
    structure = _trained_structure(train, [20])
    reference, ours = GLAIBlock.from_structure(structure), GLAIBlock.from_structure(structure)
    x, y = train.x[:300], train.y[:300]
    gates = GateCache.build(structure, x).take(slice(0, 300))
    ref_loss = AutogradStep(reference, torch.bfloat16)(x, y, gates, _NoStep(_trainable(reference)))
    our_loss = HandWrittenStep(ours, torch.bfloat16)(x, y, gates, _NoStep(_trainable(ours)))
    assert our_loss.item() == pytest.approx(ref_loss.item(), rel=1e-3)
    assert ours.theta.grad.abs().sum() > 0
    for got, want in zip(_grads(ours), _grads(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("kind", ["mlp", "glai"])
def test_bf16_training_tracks_fp32(digits_sets: tuple[DeviceSet, DeviceSet], kind: str) -> None:
    """Whole fits: the bf16 hand-written loop keeps fp32 weights and ends within a point of fp32's
    validation accuracy, from the same start and shuffles."""
    fp32, ours, train_set, val_set = _twins(digits_sets, kind)
    step = make_step(ours, torch.bfloat16, gates_cached=True)
    assert isinstance(step, HandWrittenStep) and step.low is not None
    settings = FitSettings(epochs=5, lr=1e-3, batch_size=64, seed=2, keep_best=False)
    want = fit(fp32, train_set, val_set, settings, Hooks(), "baseline")
    got = fit(ours, train_set, val_set, FitSettings(**{**settings.__dict__, "autocast": torch.bfloat16}),
              Hooks(), "baseline")
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    assert got.history[-1]["val_accuracy"] == pytest.approx(want.history[-1]["val_accuracy"], abs=0.01)
    assert got.history[-1]["val_accuracy"] > got.history[0]["val_accuracy"] - 1e-9  # it trained
    first, first_fp32 = next(ours.parameters()), next(fp32.parameters())
    assert not torch.equal(first, first_fp32)  # bf16 rounding shows: not the fp32 run in disguise


def test_bf16_rows_copied_or_cast_per_batch_train_alike(digits_sets: tuple[DeviceSet, DeviceSet],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A small split is gathered from a bf16 copy, a large one (over LOW_COPY_MAX_BYTES) cast per batch:
    rounding to bf16 before or after the gather is the same rounding, so the weights are identical."""
    import glai_core.train as train_module

    train, val = digits_sets
    step = make_step(StructuralMLP(64, [32], 10), torch.bfloat16, gates_cached=False)
    assert train_module._rows_for_step(train, step).x.dtype == torch.bfloat16
    settings = FitSettings(epochs=2, lr=1e-3, batch_size=64, seed=3, keep_best=False, autocast=torch.bfloat16)
    weights = []
    for limit in (train_module.LOW_COPY_MAX_BYTES, 0):
        monkeypatch.setattr(train_module, "LOW_COPY_MAX_BYTES", limit)
        if limit == 0:
            assert train_module._rows_for_step(train, step).x is train.x
        torch.manual_seed(0)
        model = StructuralMLP(64, [32], 10)
        fit(model, train, val, settings, Hooks(), "baseline")
        weights.append([p.detach().clone() for p in model.parameters()])
    for copied, cast in zip(*weights, strict=True):
        assert torch.equal(copied, cast)
