"""The training loop: learning, early stopping, cancellation, checkpoint resume and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glai_core.checkpoint import META_KEY, load_checkpoint
from glai_core.hooks import Cancelled, Hooks, RecordingHooks
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.train import Best, DeviceSet, FitSettings, evaluate_point, fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def new_model(seed: int = 0) -> StructuralMLP:
    torch.manual_seed(seed)
    return StructuralMLP(64, [32], 10)


SETTINGS = FitSettings(epochs=6, lr=3e-3, batch_size=64, seed=1)


def test_fit_learns_digits(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    hooks = RecordingHooks()
    result = fit(new_model(), *digits_sets, SETTINGS, hooks, "baseline")
    assert result.best_accuracy >= 0.9
    assert [e.step for e in hooks.events] == list(range(1, 7))
    assert hooks.phases == ["baseline"]
    for event in hooks.events:
        assert {"train_loss", "val_loss", "val_accuracy"} <= set(event.metrics)
        assert event.phase == "baseline" and event.total_steps == 6
    assert hooks.events[-1].metrics["train_loss"] < hooks.events[0].metrics["train_loss"]
    walls = [e.wall_time for e in hooks.events]
    assert walls == sorted(walls)


def test_patience_stops_and_restores_best(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """lr = 0 never improves: stop after `patience` epochs, with the first epoch's weights."""
    model = new_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = FitSettings(epochs=20, lr=0.0, batch_size=256, patience=2, seed=1)
    result = fit(model, *digits_sets, settings, Hooks(), "baseline")
    assert result.stopped_by == "patience"
    assert len(result.history) == 3 and result.best_step == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_same_seed_same_weights(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    first, second = new_model(), new_model()
    fit(first, *digits_sets, SETTINGS, Hooks(), "baseline")
    fit(second, *digits_sets, SETTINGS, Hooks(), "baseline")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


class StopAfterPolls(Hooks):
    """should_stop turns true at the n-th poll: with poll_seconds=0 that is mid-epoch."""

    def __init__(self, polls: int, checkpoint_dir: Path) -> None:
        self.polls, self.calls, self.checkpoint_dir = polls, 0, checkpoint_dir
        self.events: list = []

    def on_event(self, event) -> None:  # noqa: ANN001
        self.events.append(event)

    def should_stop(self) -> bool:
        self.calls += 1
        return self.calls >= self.polls


def test_cancel_and_resume_continue_exactly(digits_sets: tuple[DeviceSet, DeviceSet], tmp_path: Path) -> None:
    """Cancel after epoch 2, resume, finish: same weights as an uninterrupted run, steps continue at 3."""
    path = tmp_path / "baseline.safetensors"
    reference = new_model()
    fit(reference, *digits_sets, SETTINGS, Hooks(), "baseline")

    hooks = RecordingHooks(checkpoint_dir=tmp_path, stop_after=2)
    with pytest.raises(Cancelled):
        fit(new_model(), *digits_sets, SETTINGS, hooks, "baseline", checkpoint=path)
    saved = load_checkpoint(path)
    assert saved is not None and saved.state.step == 2 and not saved.state.finished
    assert any(k.startswith("optim.") for k in saved.tensors) and "rng" in saved.tensors

    resumed_hooks = RecordingHooks(checkpoint_dir=tmp_path)
    model = new_model(seed=123)  # different init: everything must come from the checkpoint
    result = fit(model, *digits_sets, SETTINGS, resumed_hooks, "baseline", checkpoint=path)
    steps = [e.step for e in hooks.events + resumed_hooks.events]
    assert steps == list(range(1, 7))
    assert result.resumed and [h["step"] for h in result.history] == list(range(1, 7))
    assert resumed_hooks.events[0].wall_time >= hooks.events[-1].wall_time
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    finished = load_checkpoint(path)
    assert finished is not None and finished.state.finished
    again_hooks = RecordingHooks(checkpoint_dir=tmp_path)
    again = fit(new_model(seed=5), *digits_sets, SETTINGS, again_hooks, "baseline", checkpoint=path)
    assert again.skipped and again_hooks.events == [] and again_hooks.phases == []
    for a, b in zip(again.model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_mid_epoch_cancel_repeats_only_that_epoch(digits_sets: tuple[DeviceSet, DeviceSet],
                                                  tmp_path: Path) -> None:
    path = tmp_path / "structural.safetensors"
    settings = FitSettings(epochs=3, lr=3e-3, batch_size=64, seed=1, poll_seconds=0.0)
    steps_per_epoch = -(-len(digits_sets[0]) // 64)
    hooks = StopAfterPolls(polls=steps_per_epoch + 5, checkpoint_dir=tmp_path)  # inside epoch 2
    with pytest.raises(Cancelled):
        fit(new_model(), *digits_sets, settings, hooks, "structural", checkpoint=path)
    assert [e.step for e in hooks.events] == [1]
    resumed = RecordingHooks(checkpoint_dir=tmp_path)
    fit(new_model(), *digits_sets, settings, resumed, "structural", checkpoint=path)
    assert [e.step for e in resumed.events] == [2, 3]


def test_checkpoint_is_safetensors_with_json_metadata(digits_sets: tuple[DeviceSet, DeviceSet],
                                                      tmp_path: Path) -> None:
    path = tmp_path / "baseline.safetensors"
    fit(new_model(), *digits_sets, FitSettings(epochs=2, lr=1e-3, batch_size=256), Hooks(), "baseline",
        checkpoint=path)
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[META_KEY])
    assert meta["state"]["finished"] and meta["state"]["step"] == 2
    assert [h["step"] for h in meta["state"]["history"]] == [1, 2]
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------ fast paths vs reference

def test_loop_matches_the_plain_reference_loop(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """Same seed, same shuffles: our loop (device-resident data, fused Adam, one host sync per epoch,
    batched evaluation) trains exactly the weights and accuracy the plain loop of bench/ does."""
    from bench.plain_loop import plain_mlp, plain_train

    train, val = digits_sets
    torch.manual_seed(0)
    plain = plain_mlp(64, [32], 10)
    ours = StructuralMLP(64, [32], 10)
    for source, target in zip([m for m in plain if isinstance(m, torch.nn.Linear)], ours.layers, strict=True):
        target.load_state_dict(source.state_dict())
    history = plain_train(plain, train.x, train.y, val.x, val.y, epochs=3, lr=3e-3, batch_size=64, seed=1)
    result = fit(ours, train, val, FitSettings(epochs=3, lr=3e-3, batch_size=64, seed=1, keep_best=False),
                 Hooks(), "baseline")
    linears = [m for m in plain if isinstance(m, torch.nn.Linear)]
    for source, target in zip(linears, ours.layers, strict=True):
        assert torch.allclose(source.weight, target.weight, atol=1e-5)
    assert result.history[-1]["val_accuracy"] == pytest.approx(history[-1]["val_accuracy"])


def test_linear_schedule_is_a_function_of_the_step() -> None:
    settings = FitSettings(epochs=5, lr=1.0, batch_size=8, schedule="linear", first_step=1)
    assert [settings.lr_at(s) for s in range(2, 6)] == [1.0, 0.75, 0.5, 0.25]
    assert FitSettings(epochs=5, lr=0.1, batch_size=8).lr_at(4) == 0.1


def test_bf16_autocast_keeps_predictions(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """bf16 products (the default on CPUs with bf16 arithmetic) train to the same predictions within
    tolerance; weights and evaluation stay fp32."""
    train, val = digits_sets
    models = []
    for autocast in (None, torch.bfloat16):
        model = new_model()
        fit(model, train, val, FitSettings(epochs=4, lr=3e-3, batch_size=64, seed=1, autocast=autocast),
            Hooks(), "baseline")
        assert all(p.dtype == torch.float32 for p in model.parameters())
        models.append(model)
    with torch.no_grad():
        agree = (models[0](val.x).argmax(1) == models[1](val.x).argmax(1)).float().mean()
    assert agree >= 0.95


# ------------------------------------------------------------------------------ backtracking (phase 2)

def _trained(digits_sets: tuple[DeviceSet, DeviceSet]) -> tuple[StructuralMLP, Best]:
    """A model already at ~95% and its starting point as the best so far, as phase 2 starts."""
    model = new_model()
    fit(model, *digits_sets, SETTINGS, Hooks(), "baseline")
    start = evaluate_point(model, None, digits_sets[1])
    best = Best()
    best.take(model, 0, start["val_accuracy"], start["val_loss"])
    return model, best


def test_backtracking_restores_the_best_point_and_halves_the_rate(
        digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """A rate far too large makes every epoch worse: each one is undone and the rate halves."""
    model, best = _trained(digits_sets)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    settings = FitSettings(epochs=3, lr=10.0, batch_size=64, seed=1, backtrack=True)
    result = fit(model, *digits_sets, settings, Hooks(), "quantitative", best=best)
    assert [h["lr_scale"] for h in result.history] == [0.5, 0.25, 0.125]
    assert all(h["val_accuracy"] < best.accuracy for h in result.history)
    assert result.best_step == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, start[key]), key


def test_backtracking_without_it_keeps_the_worse_point(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """The same run without backtracking trains on from the worse weights (keep_best off to see them)."""
    model, best = _trained(digits_sets)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    settings = FitSettings(epochs=1, lr=10.0, batch_size=64, seed=1, keep_best=False)
    result = fit(model, *digits_sets, settings, Hooks(), "quantitative", best=best)
    assert "lr_scale" not in result.history[0]
    assert any(not torch.equal(value, start[key]) for key, value in model.state_dict().items())


def test_backtracking_resumes_with_its_reduced_rate(digits_sets: tuple[DeviceSet, DeviceSet],
                                                   tmp_path: Path) -> None:
    """The halved rate lives in the checkpoint: cancel after epoch 1, resume, same weights as straight."""
    settings = FitSettings(epochs=3, lr=0.05, batch_size=64, seed=1, backtrack=True)
    reference, best = _trained(digits_sets)
    straight = fit(reference, *digits_sets, settings, Hooks(), "quantitative", best=best)
    assert any("lr_scale" in h for h in straight.history)  # the case under test happens

    path = tmp_path / "quantitative.safetensors"
    model, best = _trained(digits_sets)
    with pytest.raises(Cancelled):
        fit(model, *digits_sets, settings, RecordingHooks(checkpoint_dir=tmp_path, stop_after=1),
            "quantitative", checkpoint=path, best=best)
    resumed_model, _ = _trained(digits_sets)
    resumed = fit(resumed_model, *digits_sets, settings, Hooks(), "quantitative", checkpoint=path)
    assert [h.get("lr_scale") for h in resumed.history] == [h.get("lr_scale") for h in straight.history]
    for (name, a), b in zip(resumed_model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_path_block_under_bf16_autocast_stays_close_to_fp32(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """Phase 2's forward under autocast (the GPU default): the path contraction runs in bf16, the
    mask-and-sum over hidden layers in fp32, so deeper blocks stay within bf16's own rounding."""
    _, val = digits_sets
    for hidden in ([32], [12, 8], [8, 6, 5]):
        torch.manual_seed(0)
        block = GLAIBlock.from_structure(StructuralMLP(64, hidden, 10))
        with torch.no_grad():
            reference = block(val.x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = block(val.x)
        assert low.dtype == torch.float32
        assert ((low - reference).norm() / reference.norm()).item() < 1e-2, hidden
        assert (low.argmax(1) == reference.argmax(1)).float().mean() >= 0.97, hidden


def test_checkpoint_interval_saves_on_finish_and_on_stop(digits_sets: tuple[DeviceSet, DeviceSet],
                                                         tmp_path: Path) -> None:
    """With an interval longer than the phase no epoch checkpoints on its own; a stop between epochs
    still saves the last finished one, and the resumed run ends where an uninterrupted one does."""
    path = tmp_path / "baseline.safetensors"
    reference = new_model()
    fit(reference, *digits_sets, SETTINGS, Hooks(), "baseline")

    quiet = SeesCheckpoint(path, checkpoint_dir=tmp_path, checkpoint_interval_s=3600.0)
    fit(new_model(), *digits_sets, FitSettings(**{**SETTINGS.__dict__, "epochs": 3}), quiet, "baseline",
        checkpoint=path)
    assert quiet.seen == [False, False, True]  # at the events of epochs 1, 2 and 3 (the last)
    saved = load_checkpoint(path)
    assert saved is not None and saved.state.finished and saved.state.step == 3  # the phase's end
    path.unlink()

    hooks = RecordingHooks(checkpoint_dir=tmp_path, checkpoint_interval_s=3600.0, stop_after=2)
    with pytest.raises(Cancelled):
        fit(new_model(), *digits_sets, SETTINGS, hooks, "baseline", checkpoint=path)
    saved = load_checkpoint(path)
    assert saved is not None and saved.state.step == 2 and not saved.state.finished
    model = new_model(seed=123)
    fit(model, *digits_sets, SETTINGS, RecordingHooks(checkpoint_dir=tmp_path), "baseline", checkpoint=path)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class SeesCheckpoint(RecordingHooks):
    """Records, at each event, whether the checkpoint file exists yet."""

    def __init__(self, path: Path, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.path, self.seen = path, []

    def on_event(self, event) -> None:  # noqa: ANN001
        super().on_event(event)
        self.seen.append(self.path.exists())
