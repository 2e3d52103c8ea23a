"""LeanAdam is torch's fused Adam, step for step, with the same state (checkpoints stay interchangeable)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from glai_core.model import StructuralMLP
from glai_core.optim import LeanAdam
from glai_core.train import DeviceSet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _train(model: StructuralMLP, optimizer: torch.optim.Optimizer, data: DeviceSet, steps: int,
           first: int = 0) -> None:
    for step in range(first, first + steps):
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 / (1 + step // 5)  # the loop changes the rate between epochs
        part = slice((step * 64) % 1280, (step * 64) % 1280 + 64)
        optimizer.zero_grad(set_to_none=True)  # autograd's way: fresh gradients every step
        F.cross_entropy(model(data.x[part]), data.y[part]).backward()
        optimizer.step()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_same_weights_and_state_as_fused_adam(digits_sets: tuple[DeviceSet, DeviceSet],
                                              weight_decay: float) -> None:
    train, _ = digits_sets
    torch.manual_seed(0)
    reference = StructuralMLP(64, [32, 16], 10)
    ours = copy.deepcopy(reference)
    torch_adam = torch.optim.Adam(reference.parameters(), lr=3e-3, weight_decay=weight_decay, fused=True)
    lean = LeanAdam(ours.parameters(), lr=3e-3, weight_decay=weight_decay)
    _train(reference, torch_adam, train, 30)
    _train(ours, lean, train, 30)
    for a, b in zip(reference.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b)  # the same kernel on the same inputs: bit for bit
    for a, b in zip(torch_adam.state.values(), lean.state.values(), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_state_dict_moves_between_the_two(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """A checkpoint written by one resumes in the other, and the moments really are used."""
    train, _ = digits_sets
    torch.manual_seed(1)
    start = StructuralMLP(64, [32], 10)
    torch_adam = torch.optim.Adam(start.parameters(), lr=3e-3, fused=True)
    _train(start, torch_adam, train, 10)
    reference, ours, fresh = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    continued = torch.optim.Adam(reference.parameters(), lr=3e-3, fused=True)
    continued.load_state_dict(copy.deepcopy(torch_adam.state_dict()))  # as from a file: no shared moments
    lean = LeanAdam(ours.parameters(), lr=3e-3)
    lean.load_state_dict(copy.deepcopy(torch_adam.state_dict()))
    _train(reference, continued, train, 10, first=10)
    _train(ours, lean, train, 10, first=10)
    _train(fresh, LeanAdam(fresh.parameters(), lr=3e-3), train, 10, first=10)
    for a, b, c in zip(reference.parameters(), ours.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)  # without the loaded moments the weights differ
    back = torch.optim.Adam(copy.deepcopy(ours).parameters(), lr=3e-3, fused=True)
    back.load_state_dict(lean.state_dict())
    assert all(int(s["step"]) == 20 for s in back.state.values())


def test_parameters_without_gradients_take_adams_own_step(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """A frozen layer (no gradient) is skipped exactly as Adam skips it."""
    train, _ = digits_sets
    torch.manual_seed(2)
    reference = StructuralMLP(64, [32], 10)
    ours = copy.deepcopy(reference)
    torch_adam = torch.optim.Adam(reference.parameters(), lr=3e-3, fused=True)
    lean = LeanAdam(ours.parameters(), lr=3e-3)
    for model in (reference, ours):
        model.layers[0].requires_grad_(False)
    frozen = ours.layers[0].weight.clone()
    _train(reference, torch_adam, train, 5)
    _train(ours, lean, train, 5)
    assert torch.equal(ours.layers[0].weight, frozen)
    for a, b in zip(reference.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rate_from_a_device_scalar_is_the_rate_used(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """With ``lr_tensor`` set (a CUDA graph reads the rate at replay time), the step takes the tensor's
    rate, not the group's float: equal values give equal weights, a changed tensor changes them."""
    train, _ = digits_sets
    torch.manual_seed(3)
    start = StructuralMLP(64, [32], 10)
    models = [copy.deepcopy(start) for _ in range(3)]
    optimizers = [LeanAdam(m.parameters(), lr=3e-3) for m in models]
    for model, optimizer in zip(models, optimizers, strict=True):
        assert not optimizer.capturable()  # no state yet: Adam's own first step must create it
        _train(model, optimizer, train, 1)
        assert optimizer.capturable()
    # refilled before every step, as the graph's owner does; float64 on CPU: the kernel reads it as a double
    optimizers[1].lr_tensor = torch.tensor(0.0, dtype=torch.float64)
    optimizers[2].lr_tensor = torch.tensor(0.0, dtype=torch.float64)
    for step in range(1, 8):
        rate = 3e-3 / (1 + step // 5)  # what _train sets the group's float to
        optimizers[1].lr_tensor.fill_(rate)
        optimizers[2].lr_tensor.fill_(2 * rate)
        for model, optimizer in zip(models, optimizers, strict=True):
            _train(model, optimizer, train, 1, first=step)
    for a, b, c in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    two_groups = LeanAdam([{"params": [models[0].layers[0].weight]}, {"params": [models[0].layers[0].bias]}],
                          lr=1e-3)
    assert not two_groups.capturable()  # one rate tensor serves one group only


def test_restart_in_place_is_a_fresh_optimiser(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """Backtracking forgets the moments: ``restart`` zeroes them and the step count in the same tensors
    (a CUDA graph keeps pointing at them) and then trains exactly like a new optimiser."""
    train, _ = digits_sets
    torch.manual_seed(4)
    start = StructuralMLP(64, [32], 10)
    restarted, renewed, continued = (copy.deepcopy(start) for _ in range(3))
    lean = LeanAdam(restarted.parameters(), lr=3e-3)
    _train(restarted, lean, train, 5)
    first = LeanAdam(renewed.parameters(), lr=3e-3)
    _train(renewed, first, train, 5)
    kept = LeanAdam(continued.parameters(), lr=3e-3)
    _train(continued, kept, train, 5)
    tensors = [id(t) for s in lean.state.values() for t in s.values()]
    lean.restart()
    assert [id(t) for s in lean.state.values() for t in s.values()] == tensors
    assert all(float(s["step"]) == 0 and not s["exp_avg"].any() for s in lean.state.values())
    _train(restarted, lean, train, 5, first=5)
    _train(renewed, LeanAdam(renewed.parameters(), lr=3e-3), train, 5, first=5)
    _train(continued, kept, train, 5, first=5)
    for a, b, c in zip(restarted.parameters(), renewed.parameters(), continued.parameters(), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)  # keeping the moments trains differently
