"""CUDA fast paths against the CPU reference, on real data (sklearn digits).

Covered: the GLAI warm-start invariant, the training loop (device-resident data, ``BatchGather``, fused
Adam) in fp32, the hand-written steps and ``LeanAdam`` against autograd and torch's Adam, whole-epoch CUDA
graphs against the eager loop (MLP; phase 2 with a linear schedule and backtracking; fp32 and bf16
products), the bf16 hand-written steps against autocast's autograd, the whole pipeline
in "auto" (TF32) and "bf16" (both in graphs), streaming from pinned host memory (``HostRows``), the
bit-packed and dense gate caches, the primal and dual ridge solves, and checkpoint resume (pipeline and
fused-Adam state).
Everything is small: the file runs in well under two minutes on a GPU. ``DEVICE`` is a module constant so
the test bodies can be exercised on CPU too (set it to ``torch.device("cpu")`` after import and clear
``pytestmark``); the CPU reference never uses it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from glai_core.checkpoint import load_checkpoint, load_optimizer
from glai_core.config import QuantitativeConfig, TrainConfig
from glai_core.data import LoadedData, builtin, split_indices, train_val_split
from glai_core.hooks import Cancelled, Hooks, RecordingHooks
from glai_core.metrics import GateCache
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.optim import LeanAdam
from glai_core.pipeline import resolve_precision, run_pipeline
from glai_core.preprocess import Standardizer
from glai_core.solvers import quantitative_phase, ridge_fit
from glai_core.steps import AutogradStep, HandWrittenStep, make_step
from glai_core.streaming import HostRows, Placement, place
from glai_core.train import BatchGather, DeviceSet, FitResult, FitSettings, fit, make_optimizer

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="no CUDA device is present (torch.cuda.is_available() is False)"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py: the CPU references are tiny

DEVICE = torch.device("cuda")
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(autouse=True)
def exact_fp32() -> Iterator[None]:
    """fp32 matmuls without TF32 unless a test asks otherwise, and the global flags restored afterwards
    (``resolve_precision`` turns TF32 on process-wide and never turns it off)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def digits() -> LoadedData:
    return builtin("digits")


@pytest.fixture(scope="module")
def digits_sets(digits: LoadedData) -> tuple[DeviceSet, DeviceSet]:
    """sklearn digits standardised on a seeded 80/20 split, on the CPU (as tests/core/conftest.py)."""
    data = train_val_split(digits, 0.2, 0)
    scaler = Standardizer.fit(data.x)
    assert data.x_val is not None and data.y_val is not None
    return (DeviceSet(scaler.apply(torch.as_tensor(data.x)), torch.as_tensor(data.y)),
            DeviceSet(scaler.apply(torch.as_tensor(data.x_val)), torch.as_tensor(data.y_val)))


def on(device: torch.device, sets: tuple[DeviceSet, DeviceSet]) -> tuple[DeviceSet, DeviceSet]:
    return tuple(DeviceSet(s.x.to(device), s.y.to(device)) for s in sets)  # type: ignore[return-value]


def new_mlp(hidden: list[int], device: torch.device, seed: int = 0) -> StructuralMLP:
    """Same initial weights on every device: drawn on the CPU, then moved."""
    torch.manual_seed(seed)
    return StructuralMLP(64, hidden, 10).to(device)


def small_config(device: torch.device, precision: str, baseline: bool = True, pruning: bool = False
                 ) -> TrainConfig:
    """tests/core/test_pipeline.py's small digits configuration on a chosen device and precision."""
    return TrainConfig.from_dict({
        "architecture": {"hidden": [64]},
        "structural": {"max_epochs": 6, "min_epochs": 2, "batch_size": 128},
        "quantitative": {"epochs": 2, "batch_size": 128, "ridge_lambda_search": 1},
        "pruning": {"enabled": pruning, "sparsities": [0.5], "finetune_epochs": 1},
        "baseline": {"enabled": baseline, "max_epochs": 12, "batch_size": 128},
        "device": str(device),
        "precision": precision,
    })


# ------------------------------------------------------------------------------------------ (a) warm start

@pytest.mark.parametrize("hidden", [[24], [16, 12], [10, 8, 6]])
def test_warm_start_block_equals_structure(digits_sets: tuple[DeviceSet, DeviceSet],
                                           hidden: list[int]) -> None:
    """Theta initialised from S computes S's function on the device, for 1, 2 and 3 hidden layers."""
    structure = new_mlp(hidden, DEVICE)
    block = GLAIBlock.from_structure(structure)
    assert block.theta.device.type == DEVICE.type and block.theta.dtype == torch.float32
    x = digits_sets[0].x.to(DEVICE)
    with torch.no_grad():
        expected = structure(x)
        got = block(x)
    gates = structure.gates(x)
    assert all(0.05 < float(g.float().mean()) < 0.95 for g in gates)  # real, mixed activation patterns
    error = float((got - expected).abs().max() / expected.abs().max())
    # fp32 rounding is ~3e-7 of the logit scale (measured on CPU); TF32 or a wrong path would be ~1e-3
    assert error < 2e-5, f"warm start differs from S by {error:.2e} of the logit scale"
    assert float((got.argmax(1) == expected.argmax(1)).float().mean()) >= 0.995
    # the path products themselves equal the CPU's (elementwise products: no reduction order involved)
    cpu_block = GLAIBlock.from_structure(copy.deepcopy(structure).to(CPU))
    torch.testing.assert_close(block.theta.detach().cpu(), cpu_block.theta.detach(), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------ (b) the loop

def test_fit_fp32_on_device_matches_cpu(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """A fixed number of epochs with the same initial weights and shuffles (a CPU generator drives both):
    the device run's validation accuracy is within 1.5 points of the CPU run's."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        settings = FitSettings(epochs=8, lr=3e-3, batch_size=64, seed=1, keep_best=False)
        finals = []
        for device in (CPU, DEVICE):
            train, val = on(device, digits_sets)
            model = new_mlp([32], device)
            result = fit(model, train, val, settings, Hooks(), "baseline")
            assert [h["step"] for h in result.history] == list(range(1, 9))
            assert all(p.device.type == device.type for p in model.parameters())
            finals.append(result.history[-1]["val_accuracy"])
        cpu_acc, device_acc = finals
        assert cpu_acc >= 0.9 and device_acc >= 0.9
        assert abs(device_acc - cpu_acc) <= 0.015, (cpu_acc, device_acc)
        optimizer = make_optimizer(new_mlp([32], DEVICE), 1e-3)
        assert optimizer.defaults["fused"] is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_batch_gather_reuses_one_device_buffer(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    x = digits_sets[0].x.to(DEVICE)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    gather = BatchGather()
    first = gather(0, x, order[:64])
    assert first.device.type == DEVICE.type and torch.equal(first, x[order[:64]])
    pointer = first.data_ptr()
    for index in (order[64:128], order[-5:]):  # a full batch, then a short last batch: same memory
        batch = gather(0, x, index)
        assert batch.data_ptr() == pointer and torch.equal(batch, x[index])


Makers = list[Callable[[], torch.nn.Module]]


def _step_inputs(digits_sets: tuple[DeviceSet, DeviceSet], mlp_hidden: list[int]
                 ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], Makers]:
    """256 training rows on the device, a structure's cached gates for them, and makers of twin models:
    an MLP of ``mlp_hidden`` and a GLAI block warm-started from that structure."""
    train, _ = on(DEVICE, digits_sets)
    x, y = train.x[:256], train.y[:256]
    structure = new_mlp([24], DEVICE)
    gates = GateCache.build(structure, x).take(slice(0, 256))
    return x, y, gates, [lambda: new_mlp(mlp_hidden, DEVICE, seed=3),
                         lambda: GLAIBlock.from_structure(structure)]


def test_hand_written_steps_and_lean_adam_on_device_match_autograd(
        digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """On the device, the hand-written MLP and GLAI steps give autograd's gradients and loss, and
    LeanAdam's direct kernel call gives torch's fused Adam step bit for bit."""
    x, y, gates, makers = _step_inputs(digits_sets, [32, 16])
    for make in makers:
        reference, ours = make(), make()
        trainable = [p for p in reference.parameters() if p.requires_grad]
        torch_adam = torch.optim.Adam(trainable, lr=1e-3, fused=True)
        lean = make_optimizer(ours, 1e-3)
        assert isinstance(lean, LeanAdam) and isinstance(make_step(ours, None, True), HandWrittenStep)
        step_gates = gates if isinstance(ours, GLAIBlock) else None
        for _ in range(3):
            ref_loss = AutogradStep(reference)(x, y, step_gates, torch_adam)
            our_loss = HandWrittenStep(ours)(x, y, step_gates, lean)
            torch.testing.assert_close(our_loss, ref_loss, rtol=1e-5, atol=1e-5)
        for a, b in zip(reference.parameters(), ours.parameters(), strict=True):
            assert a.device.type == DEVICE.type
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_hand_written_steps_on_device_match_autocast(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """bf16 products on the device: the hand-written MLP and GLAI steps give autograd's loss and gradients
    under autocast, into fp32 gradient buffers (layers under ``SMALL_LAYER`` weights stay fp32)."""
    x, y, gates, makers = _step_inputs(digits_sets, [64, 32])
    for make in makers:
        reference, ours = make(), make()
        step_gates = gates if isinstance(ours, GLAIBlock) else None
        step = make_step(ours, torch.bfloat16, True)
        assert isinstance(step, HandWrittenStep) and step.low is not None
        assert step.low.weights()[0].dtype == torch.bfloat16
        # a zero rate leaves the weights where they are: one call shows the gradients only
        ref_loss = AutogradStep(reference, torch.bfloat16)(
            x, y, step_gates, torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.0))
        our_loss = step(x, y, step_gates, torch.optim.SGD(step.trainable, lr=0.0))
        assert our_loss.item() == pytest.approx(ref_loss.item(), rel=1e-3)
        for a, b in zip(reference.parameters(), ours.parameters(), strict=True):
            if not a.requires_grad:
                continue
            assert b.grad.dtype == torch.float32 and b.grad.device.type == DEVICE.type
            assert b.grad.abs().sum() > 0
            torch.testing.assert_close(b.grad, a.grad, rtol=2e-2, atol=2e-3)


# ------------------------------------------------------------------------------------------ (c) pipeline

@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_pipeline_on_device_matches_cpu_fp32(digits: LoadedData, precision: str) -> None:
    """precision "auto" (fp32 + TF32, hand-written steps in CUDA graphs) and "bf16" (hand-written
    mixed-precision steps, also in graphs) end within 2 points of the CPU fp32 pipeline."""
    assert resolve_precision("auto", DEVICE) is None
    assert resolve_precision("bf16", DEVICE) is torch.bfloat16
    reference = run_pipeline(digits, small_config(CPU, "fp32", pruning=True), RecordingHooks())
    hooks = RecordingHooks()
    result = run_pipeline(digits, small_config(DEVICE, precision, pruning=True), hooks)
    summary = result.summary
    assert summary["training_precision"] == ("tf32" if precision == "auto" else "bf16")
    assert result.glai.theta.device.type == DEVICE.type and result.glai.theta.dtype == torch.float32
    assert {"speedup", "glai_accuracy", "baseline_accuracy", "glai_time_to_target_s"} <= set(summary)
    assert summary["speedup"] is None or summary["speedup"] > 0
    for run in (reference.summary, summary):
        assert run["glai_accuracy"] > 0.85 and run["baseline_accuracy"] > 0.85
        assert run["glai_accuracy"] >= run["warm_start_accuracy"]
        assert set(run["pruned"]) == {"0.5"}
    assert abs(summary["glai_accuracy"] - reference.summary["glai_accuracy"]) <= 0.02, (
        summary["glai_accuracy"], reference.summary["glai_accuracy"])
    assert hooks.phases == ["structural", "quantitative", "pruning", "baseline"]


# ------------------------------------------------------------------------------------------ (d) streaming

def _train_on(placement: Placement) -> tuple[float, float]:
    """S for 6 epochs, then phase 2 (auto solver, 2 epochs) on that placement; both best accuracies."""
    structure = new_mlp([16], DEVICE)
    s = fit(structure, placement.train, placement.val, FitSettings(epochs=6, lr=3e-3, batch_size=64, seed=1),
            Hooks(), "structural")
    q = quantitative_phase(GLAIBlock.from_structure(structure), placement.train, placement.val,
                           QuantitativeConfig(epochs=2, batch_size=128), Hooks())
    return s.best_accuracy, q.best_accuracy


def test_streamed_placement_trains_like_resident(digits: LoadedData) -> None:
    """A tiny budget keeps both splits in host memory, gathered per batch through two pinned staging
    buffers used in turn (each reused only after its copy finished); same rows, same accuracy."""
    kwargs = {"n_classes": len(digits.class_names), "validation_fraction": 0.2, "seed": 0, "device": DEVICE}
    resident = place(digits.x, digits.y, None, None, **kwargs)  # type: ignore[arg-type]
    streamed = place(digits.x, digits.y, None, None, budget_bytes=1024, **kwargs)  # type: ignore[arg-type]
    assert resident.mode == "resident" and streamed.mode == "streamed"
    assert isinstance(resident.train.x, torch.Tensor) and resident.train.x.device.type == DEVICE.type
    for split in (streamed.train, streamed.val):
        assert isinstance(split.x, HostRows) and not isinstance(split.x, torch.Tensor)
        assert split.x.source.device.type == "cpu"  # the features are not resident on the device
        assert not split.x.source.is_pinned()  # pinning the split would round it up to a power of two
        assert split.y.device.type == DEVICE.type
    batch = streamed.train.x[torch.arange(10, device=DEVICE)]
    assert isinstance(batch, torch.Tensor) and batch.device.type == DEVICE.type
    torch.testing.assert_close(batch, resident.train.x[:10])  # the same standardised rows
    if DEVICE.type == "cuda":
        rows = streamed.train.x
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
        batches = [rows[order[s:s + 100]] for s in range(0, 1000, 100)]  # buffers reused 5 times each
        assert all(b is not None and b.is_pinned() for b in rows.staging)
        for start, got in zip(range(0, 1000, 100), batches, strict=True):
            torch.testing.assert_close(got, resident.train.x[order[start:start + 100].to(DEVICE)])
        torch.testing.assert_close(rows[slice(5, 905)], resident.train.x[5:905])

    s_resident, q_resident = _train_on(resident)
    s_streamed, q_streamed = _train_on(streamed)
    assert s_resident >= 0.85 and q_resident >= 0.9
    assert abs(s_streamed - s_resident) <= 0.01, (s_streamed, s_resident)
    assert abs(q_streamed - q_resident) <= 0.01, (q_streamed, q_resident)


# ------------------------------------------------------------------------------------------ (e) gate cache

def test_gate_cache_packed_and_dense_match_structure(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """Bit-packed only (dense_bytes=0) and dense caches give exactly S's gates (widths not multiples of 8)."""
    structure = new_mlp([12, 7], DEVICE)
    x = digits_sets[0].x.to(DEVICE)
    chunk = 512  # the reference uses the cache's chunks, so both see the same matmuls
    per_chunk = [structure.gates(x[s:s + chunk]) for s in range(0, len(x), chunk)]
    reference = [torch.cat(parts) for parts in zip(*per_chunk, strict=True)]
    assert all(0.05 < float(g.float().mean()) < 0.95 for g in reference)
    packed = GateCache.build(structure, x, chunk=chunk, dense_bytes=0)
    dense = GateCache.build(structure, x, chunk=chunk)
    assert packed.dense is None and dense.dense is not None
    assert all(p.dtype == torch.uint8 and p.device.type == DEVICE.type for p in packed.packed)
    assert len(packed) == len(dense) == len(x)
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:300].to(DEVICE)
    for cache in (packed, dense):
        for key in (index, slice(None), slice(100, 357)):
            for got, ref in zip(cache.take(key), reference, strict=True):
                assert got.device.type == DEVICE.type and got.shape == ref[key].shape
                assert torch.equal(got.bool(), ref[key])
                assert got.dtype == (torch.bool if cache is packed else torch.float32)
    for got, ref in zip(dense.take(index, BatchGather()), reference, strict=True):  # the training loop's way
        assert torch.equal(got.bool(), ref[index])
    for frequency, ref in zip(packed.frequency(), reference, strict=True):
        torch.testing.assert_close(frequency, ref.float().mean(dim=0))


# ------------------------------------------------------------------------------------------ (f) ridge

def _moved(data: DeviceSet, device: torch.device) -> DeviceSet:
    """The split and its gate cache on ``device``: the same gates everywhere, so the solvers alone differ."""
    gates = data.gates
    assert gates is not None and gates.dense is not None
    cache = GateCache([p.to(device) for p in gates.packed], gates.widths, [g.to(device) for g in gates.dense])
    return DeviceSet(data.x.to(device), data.y.to(device), cache)


def test_ridge_primal_and_dual_on_device_match_cpu(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """The float64 primal (normal equations) and the dual (path kernel) solves on the device give the CPU
    solution; on the device the two forms agree with each other (the same ridge problem)."""
    train, val = digits_sets
    structure = new_mlp([12], CPU)
    fit(structure, train, val, FitSettings(epochs=3, lr=1e-3, batch_size=128), Hooks(), "structural")
    train, val = train.with_gates(structure), val.with_gates(structure)
    solutions = {}
    for device in (CPU, DEVICE):
        for method in ("cholesky", "dual"):
            block = GLAIBlock.from_structure(copy.deepcopy(structure).to(device))
            solution = ridge_fit(block, _moved(train, device), _moved(val, device), [0.1], method=method)
            assert solution.method == method and solution.theta.device.type == device.type
            solutions[device is DEVICE, method] = solution

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.cpu() - b.cpu()).norm() / b.cpu().norm())

    # relative perturbations of 2e-7 in the inputs move theta by 3e-7 (primal) and 1.5e-6 (dual) on CPU
    for method, tolerance in (("cholesky", 1e-5), ("dual", 1e-4)):
        cpu, dev = solutions[False, method], solutions[True, method]
        assert cpu.val_accuracy >= 0.95
        assert relative(dev.theta, cpu.theta) < tolerance, (method, relative(dev.theta, cpu.theta))
        assert relative(dev.bias, cpu.bias) < tolerance
        assert dev.temperature == pytest.approx(cpu.temperature, rel=1e-4)
        assert abs(dev.val_accuracy - cpu.val_accuracy) <= 1.0 / len(val) + 1e-9
    primal, dual = solutions[True, "cholesky"], solutions[True, "dual"]
    torch.testing.assert_close(dual.theta, primal.theta, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------ (g) resume

def test_pipeline_resume_after_structural_phase(digits: LoadedData, tmp_path: Path) -> None:
    """Cancelled once the structural phase is done (in phase 2, right after its closed-form step) and
    resumed from ``hooks.checkpoint_dir``: the same summary as an uninterrupted device run. CUDA kernels
    are not promised to be bitwise deterministic, so accuracies may differ by one validation sample."""
    config = small_config(DEVICE, "auto")
    reference_hooks = RecordingHooks()
    reference = run_pipeline(digits, config, reference_hooks)
    n_structural = sum(e.phase == "structural" for e in reference_hooks.events)
    n_val = len(split_indices(digits.y, len(digits.class_names), 0.2, 0)[1])  # the pipeline's split

    hooks = RecordingHooks(checkpoint_dir=tmp_path, stop_after=n_structural)
    with pytest.raises(Cancelled):
        run_pipeline(digits, config, hooks)
    assert "quantitative" in hooks.phases and "baseline" not in hooks.phases
    structural = load_checkpoint(tmp_path / "structural.safetensors")
    assert structural is not None and structural.state.finished

    resumed_hooks = RecordingHooks(checkpoint_dir=tmp_path)
    resumed = run_pipeline(digits, config, resumed_hooks)
    assert "structural" not in resumed_hooks.phases and resumed_hooks.phases[-1] == "baseline"
    assert resumed.glai.theta.device.type == DEVICE.type
    assert resumed.summary["structural_epochs"] == reference.summary["structural_epochs"]
    for key in ("structure_accuracy", "warm_start_accuracy", "glai_accuracy", "baseline_accuracy"):
        assert resumed.summary[key] == pytest.approx(reference.summary[key], abs=1.0 / n_val + 1e-9), key


def test_fit_resume_restores_fused_adam_state_on_device(digits_sets: tuple[DeviceSet, DeviceSet],
                                                        tmp_path: Path) -> None:
    """Cancel after epoch 2 with the optimizer state checkpointed, resume: the fused Adam state comes back
    on the device and training continues to the uninterrupted run's weights."""
    train, val = on(DEVICE, digits_sets)
    settings = FitSettings(epochs=5, lr=3e-3, batch_size=64, seed=1)
    reference = new_mlp([32], DEVICE)
    reference_result = fit(reference, train, val, settings, Hooks(), "baseline")

    path = tmp_path / "baseline.safetensors"
    with pytest.raises(Cancelled):
        stopping = RecordingHooks(checkpoint_dir=tmp_path, stop_after=2)
        fit(new_mlp([32], DEVICE), train, val, settings, stopping, "baseline", checkpoint=path)
    saved = load_checkpoint(path)
    assert saved is not None and saved.state.step == 2 and any(k.startswith("optim.") for k in saved.tensors)
    optimizer = make_optimizer(new_mlp([32], DEVICE), settings.lr)
    load_optimizer(optimizer, saved)
    for state in optimizer.state.values():
        assert state["step"].device.type == DEVICE.type and float(state["step"]) > 0
        assert state["exp_avg"].device.type == DEVICE.type

    model = new_mlp([32], DEVICE, seed=123)  # a different init: everything must come from the checkpoint
    result = fit(model, train, val, settings, RecordingHooks(checkpoint_dir=tmp_path), "baseline",
                 checkpoint=path)
    assert result.resumed and [h["step"] for h in result.history] == list(range(1, 6))
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert a.device.type == DEVICE.type, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert result.best_accuracy == pytest.approx(reference_result.best_accuracy, abs=1.0 / len(val) + 1e-9)


# ------------------------------------------------------------------------------------------ (h) CUDA graphs

def _eager_and_graphed(make_model: Callable[[], torch.nn.Module], train: DeviceSet, val: DeviceSet,
                       settings: FitSettings) -> tuple[list[FitResult], list[torch.nn.Module]]:
    results, models = [], []
    for graphs in (False, True):
        model = make_model()
        results.append(fit(model, train, val, replace(settings, cuda_graphs=graphs), Hooks(), "phase"))
        models.append(model)
    return results, models


def _assert_same_training(results: list[FitResult], models: list[torch.nn.Module], n_val: int) -> None:
    eager, graphed = results
    assert [h["step"] for h in graphed.history] == [h["step"] for h in eager.history]
    assert [h.get("lr_scale") for h in graphed.history] == [h.get("lr_scale") for h in eager.history]
    for a, b in zip(eager.history, graphed.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4), (a, b)
        assert abs(b["val_accuracy"] - a["val_accuracy"]) <= 1.0 / n_val + 1e-9, (a, b)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_graphed_epochs_train_like_the_eager_loop(digits_sets: tuple[DeviceSet, DeviceSet],
                                                  autocast: torch.dtype | None) -> None:
    """Every epoch: the first batch eagerly (on a fresh optimiser it creates Adam's state), batches 2-22
    as one graph replay, the short last batch eagerly (1437 = 22 * 64 + 29). One capture for the phase;
    the same losses, accuracies and weights as the eager loop, with fp32 products and with bf16 ones
    (the bf16 copies of weights and batch are refreshed inside the graph)."""
    if DEVICE.type != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    train, val = on(DEVICE, digits_sets)
    settings = FitSettings(epochs=6, lr=3e-3, batch_size=64, seed=1, keep_best=False, autocast=autocast)
    results, models = _eager_and_graphed(lambda: new_mlp([32], DEVICE), train, val, settings)
    assert (results[0].graph_captures, results[0].graph_replays) == (0, 0)
    assert (results[1].graph_captures, results[1].graph_replays) == (1, 6)
    assert results[1].history[-1]["val_accuracy"] >= 0.9
    _assert_same_training(results, models, len(val))


@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_graphed_phase2_follows_the_schedule_and_backtracking(digits_sets: tuple[DeviceSet, DeviceSet],
                                                              autocast: torch.dtype | None) -> None:
    """Phase 2 on cached gates with a linear schedule (the rate changes every epoch: read from a device
    scalar at replay) and backtracking (best weights restored, Adam restarted in place): still one
    capture, every epoch a replay, and the eager loop's training."""
    if DEVICE.type != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    train, val = on(DEVICE, digits_sets)
    structure = new_mlp([24], DEVICE)
    fit(structure, train, val, FitSettings(epochs=3, lr=3e-3, batch_size=64, seed=1), Hooks(), "structural")
    train, val = train.with_gates(structure), val.with_gates(structure)
    # a rate large enough that some epoch improves nothing (on CPU the 5th of 8; on an H100 too)
    settings = FitSettings(epochs=8, lr=3e-2, batch_size=64, seed=2, schedule="linear", backtrack=True,
                           autocast=autocast)
    results, models = _eager_and_graphed(lambda: GLAIBlock.from_structure(structure), train, val, settings)
    assert any("lr_scale" in h for h in results[0].history), "no backtracking happened: raise the rate"
    assert (results[1].graph_captures, results[1].graph_replays) == (1, settings.epochs)
    _assert_same_training(results, models, len(val))
