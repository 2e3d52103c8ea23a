"""Phase-2 solvers: features, ridge against lstsq, CG against Cholesky, never below the warm start."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glai_core.config import QuantitativeConfig
from glai_core.hooks import Cancelled, Hooks, RecordingHooks
from glai_core.metrics import GateCache, evaluate
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.solvers import (
    SubspaceCorrection,
    cg_solve,
    cholesky_solve,
    choose_phase2,
    dual_solve,
    fit_temperature,
    full_fp32_matmul,
    input_basis,
    normal_equations,
    path_features,
    path_kernel,
    quantitative_phase,
    ridge_fit,
    warm_prior,
)
from glai_core.train import DeviceSet, FitSettings, fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def toy_problem(hidden: list[int], n: int = 300, d: int = 5, m: int = 3, seed: int = 0) -> tuple[GLAIBlock,
                                                                                               DeviceSet]:
    torch.manual_seed(seed)
    structure = StructuralMLP(d, hidden, m)
    x = torch.randn(n, d)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long() + (x[:, 3] > 1).long()
    return GLAIBlock.from_structure(structure), DeviceSet(x, y, GateCache.build(structure, x))


@pytest.mark.parametrize("hidden", [[6], [4, 3], [3, 2, 2]])
def test_features_reproduce_block_forward(hidden: list[int]) -> None:
    block, data = toy_problem(hidden)
    gates = data.gates.take(slice(0, 50))
    feats = path_features(data.x[:50], gates)
    expected = block(data.x[:50], gates=gates)
    got = feats @ block.theta.detach().reshape(block.out_features, -1).T + block.bias.detach()
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("with_prior", [False, True])
def test_ridge_matches_lstsq(with_prior: bool) -> None:
    """Normal equations + Cholesky == float64 lstsq on the augmented system [F 1; sqrt(lam) P]."""
    block, data = toy_problem([4, 3])
    gram, rhs = normal_equations(block, data)
    lam = 0.3
    prior = warm_prior(block, gram, rhs, data) if with_prior else None
    got = cholesky_solve(gram, rhs, lam, prior)

    feats = path_features(data.x.double(), data.gates.take(slice(None)))
    design = torch.cat([feats, torch.ones(len(data), 1, dtype=torch.float64)], dim=1)
    penalty = torch.eye(design.shape[1], dtype=torch.float64)[:-1] * lam**0.5  # the intercept is free
    targets = F.one_hot(data.y, 3).double()
    prior_rows = torch.zeros(design.shape[1] - 1, 3, dtype=torch.float64) if prior is None else \
        lam**0.5 * prior[:-1]
    reference = torch.linalg.lstsq(torch.cat([design, penalty]), torch.cat([targets, prior_rows])).solution
    assert torch.allclose(got, reference, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("hidden", [[5], [4, 3]])
def test_cg_matches_cholesky(hidden: list[int]) -> None:
    block, data = toy_problem(hidden)
    gram, rhs = normal_equations(block, data)
    prior = warm_prior(block, gram, rhs, data)
    relative = 0.5
    lam_scale = float(gram.diagonal()[:-1].mean())
    exact = cholesky_solve(gram, rhs, relative * lam_scale, prior)
    approx, lam = cg_solve(block, data, relative, prior, max_iter=400, tol=1e-11)
    assert lam == pytest.approx(relative * lam_scale, rel=1e-9)
    assert float((approx - exact).norm() / exact.norm()) < 1e-6


def test_ridge_fit_switches_to_cg_above_the_memory_bound() -> None:
    block, data = toy_problem([5])
    _, val = toy_problem([5], seed=0, n=100)
    val = DeviceSet(val.x, val.y, GateCache.build(block.structure, val.x))
    solution = ridge_fit(block, data, val, [0.5], max_normal_matrix_bytes=1, cg_max_iter=300, cg_tol=1e-10)
    assert solution.method == "cg"
    cholesky = ridge_fit(GLAIBlock.from_structure(block.structure), data, val, [0.5])
    assert cholesky.method == "cholesky"
    assert torch.allclose(solution.theta, cholesky.theta, rtol=1e-3, atol=1e-4)


def test_temperature_recovers_the_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    true_logits = 3.0 * torch.randn(4000, 5, generator=gen)
    labels = torch.multinomial(torch.softmax(true_logits, dim=1), 1, generator=gen).squeeze(1)
    assert fit_temperature(true_logits / 4.0, labels) == pytest.approx(4.0, rel=0.1)


def trained_structure(train: DeviceSet, val: DeviceSet, epochs: int) -> StructuralMLP:
    torch.manual_seed(0)
    structure = StructuralMLP(train.x.shape[1], [12], 10)
    fit(structure, train, val, FitSettings(epochs=epochs, lr=1e-3, batch_size=128), Hooks(), "structural")
    return structure


@pytest.mark.parametrize("solver,lr", [("adam", 100.0), ("ridge", 1e-4), ("ridge+adam", 100.0)])
def test_phase_never_ends_below_warm_start(digits_sets: tuple[DeviceSet, DeviceSet], solver: str,
                                           lr: float) -> None:
    """A destructive learning rate (100) must not cost accuracy: the best point, warm start included, wins."""
    train, val = digits_sets
    structure = trained_structure(train, val, epochs=8)
    block = GLAIBlock.from_structure(structure)
    hooks = RecordingHooks()
    cfg = QuantitativeConfig(solver=solver, lr=lr, epochs=2, patience=5, batch_size=256,  # type: ignore[arg-type]
                             ridge_lambda_search=0, ridge_lambda=0.1)
    result = quantitative_phase(block, train, val, cfg, hooks)
    warm = hooks.events[0].metrics["val_accuracy"]
    assert hooks.events[0].step == 0
    final = evaluate(block, val.x, val.y)[1]
    assert final >= warm
    assert final == pytest.approx(result.best_accuracy)
    assert [e.step for e in hooks.events] == list(range(len(hooks.events)))
    if solver != "ridge":  # the guard was needed: Adam epochs fell below the best point
        assert min(e.metrics["val_accuracy"] for e in hooks.events[1:]) < final


def test_ridge_beats_the_early_structure_on_digits(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """With S after 3 epochs (~50-60% accurate) the closed form reaches >= 0.95 on digits in one solve."""
    train, val = digits_sets
    structure = trained_structure(train, val, epochs=3)
    block = GLAIBlock.from_structure(structure)
    warm = evaluate(block, val.x, val.y)[1]
    cfg = QuantitativeConfig(solver="ridge", ridge_lambda_search=1)
    result = quantitative_phase(block, train, val, cfg, Hooks())
    assert result.best_accuracy >= max(0.95, warm)
    assert result.stopped_by == "solved"


# ------------------------------------------------------------------------------ fast paths vs reference

@pytest.mark.parametrize("hidden", [[6], [4, 3]])
@pytest.mark.parametrize("with_prior", [False, True])
def test_dual_matches_lstsq(hidden: list[int], with_prior: bool) -> None:
    """The kernel (dual) solve returns the primal ridge minimiser: float64 lstsq on [F 1; sqrt(lam) I]."""
    block, data = toy_problem(hidden, n=120)
    block = block.double()
    data = DeviceSet(data.x.double(), data.y, GateCache.build(block.structure, data.x.double()))
    _, val = toy_problem(hidden, seed=1, n=60)
    val = DeviceSet(val.x.double(), val.y, GateCache.build(block.structure, val.x.double()))
    prior = warm_prior(block, None, None, data) if with_prior else None
    got, lam, relative = dual_solve(block, data, val, [0.3], prior)
    assert relative == 0.3

    feats = path_features(data.x, data.gates.take(slice(None)))
    assert lam == pytest.approx(0.3 * float((feats * feats).sum(dim=0).mean()), rel=1e-9)
    design = torch.cat([feats, torch.ones(len(data), 1, dtype=torch.float64)], dim=1)
    penalty = torch.eye(design.shape[1], dtype=torch.float64)[:-1] * lam**0.5
    targets = F.one_hot(data.y, 3).double()
    prior_rows = torch.zeros(design.shape[1] - 1, 3, dtype=torch.float64) if prior is None else \
        lam**0.5 * prior[:-1]
    reference = torch.linalg.lstsq(torch.cat([design, penalty]), torch.cat([targets, prior_rows])).solution
    assert torch.allclose(got, reference, rtol=1e-6, atol=1e-8)


def test_path_kernel_is_the_feature_gram() -> None:
    block, data = toy_problem([4, 3], n=50)
    gates = data.gates.take(slice(None))
    feats = path_features(data.x.double(), gates)
    kernel = path_kernel(data.x.double(), gates, data.x.double(), gates)
    assert torch.allclose(kernel, feats @ feats.T, rtol=1e-9, atol=1e-9)


def test_ridge_fit_picks_the_cheaper_exact_method() -> None:
    """N < D: the dual; N > D: the primal; both give the same predictions (same lambda grid)."""
    block, data = toy_problem([5], n=40, d=9)  # D = 5 * 10 = 50 > N = 40
    _, val = toy_problem([5], seed=1, n=50, d=9)
    val = DeviceSet(val.x, val.y, GateCache.build(block.structure, val.x))
    auto = ridge_fit(GLAIBlock.from_structure(block.structure), data, val, [0.1, 1.0])
    primal = ridge_fit(GLAIBlock.from_structure(block.structure), data, val, [0.1, 1.0], method="cholesky")
    assert auto.method == "dual" and primal.method == "cholesky"
    assert auto.relative_lambda == primal.relative_lambda
    assert torch.allclose(auto.theta, primal.theta, rtol=1e-3, atol=1e-5)
    big_block, big = toy_problem([3], n=400)  # D = 18 < N
    _, big_val = toy_problem([3], seed=1, n=50)
    big_val = DeviceSet(big_val.x, big_val.y, GateCache.build(big_block.structure, big_val.x))
    assert ridge_fit(big_block, big, big_val, [0.1]).method == "cholesky"


def test_auto_solver_follows_the_cost_model() -> None:
    cfg = QuantitativeConfig(solver="auto", batch_size=128, epochs=10)
    small, info = choose_phase2(4000, 1000, 40, [31], 10, cfg)  # MNIST-1D: D = 1271, exact form cheap
    assert small.startswith("ridge+") and info["closed_form"] == "cholesky"
    large, info = choose_phase2(48000, 12000, 784, [26], 10, QuantitativeConfig(solver="auto", batch_size=512,
                                                                                  epochs=10))
    assert large == "adam" and info["closed_form"] == "cg"  # Fashion-MNIST pixels: D = 20k, N = 48k
    assert choose_phase2(10, 10, 4, [3], 2, QuantitativeConfig(solver="ridge"))[0] == "ridge"


@pytest.mark.parametrize("solver", ["auto", "adam"])
def test_auto_and_adam_phases_keep_the_warm_start_and_resume(digits_sets: tuple[DeviceSet, DeviceSet],
                                                            solver: str, tmp_path) -> None:  # noqa: ANN001
    train, val = digits_sets
    structure = trained_structure(train, val, epochs=3)
    cfg = QuantitativeConfig(solver=solver, epochs=3, batch_size=256)  # type: ignore[arg-type]
    reference = GLAIBlock.from_structure(structure)
    hooks = RecordingHooks()
    result = quantitative_phase(reference, train, val, cfg, hooks)
    assert result.best_accuracy >= hooks.events[0].metrics["val_accuracy"]
    if solver == "auto":  # digits: D = 13 * 65 is small, so the closed form runs first
        assert result.extra["auto"]["solver"].startswith("ridge+")
        assert hooks.events[1].metrics["ridge_lambda"] > 0
    stopped = RecordingHooks(checkpoint_dir=tmp_path, stop_after=2)
    with pytest.raises(Cancelled):
        quantitative_phase(GLAIBlock.from_structure(structure), train, val, cfg, stopped,
                           checkpoint=tmp_path / "q.safetensors")
    resumed = GLAIBlock.from_structure(structure)
    again = quantitative_phase(resumed, train, val, cfg, RecordingHooks(checkpoint_dir=tmp_path),
                               checkpoint=tmp_path / "q.safetensors")
    if result.extra["solver"].endswith("adam"):  # the same epochs replayed bit for bit
        assert torch.equal(resumed.theta, reference.theta)
    else:  # L-BFGS resumes from its checkpoint with a fresh curvature memory: the same quality
        assert again.best_accuracy >= hooks.events[0].metrics["val_accuracy"]
        assert again.best_accuracy == pytest.approx(result.best_accuracy, abs=0.02)


def test_cached_gates_train_like_recomputed_gates(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """Phase 2 with the dense cache, the bit-packed cache and gates recomputed by S in every step (the
    plain loop's way) ends at the same weights."""
    train, val = digits_sets
    structure = trained_structure(train, val, epochs=2)
    settings = FitSettings(epochs=2, lr=3e-4, batch_size=128, seed=3, schedule="linear")
    thetas = []
    for gates in ("dense", "packed", None):
        block = GLAIBlock.from_structure(structure)
        if gates is None:
            tr, va = train, val
        else:
            limit = 0 if gates == "packed" else 1 << 30
            tr = DeviceSet(train.x, train.y, GateCache.build(structure, train.x, dense_bytes=limit))
            va = DeviceSet(val.x, val.y, GateCache.build(structure, val.x, dense_bytes=limit))
        fit(block, tr, va, settings, Hooks(), "quantitative")
        thetas.append(block.theta.detach())
    assert torch.allclose(thetas[0], thetas[1], atol=1e-6) and torch.allclose(thetas[0], thetas[2], atol=1e-6)


def test_subspace_correction_folds_into_the_same_function(digits_sets: tuple[DeviceSet, DeviceSet]) -> None:
    """The input-subspace phase-2 model and the block it folds into give the same predictions."""
    train, val = digits_sets
    structure = trained_structure(train, val, epochs=2)
    block = GLAIBlock.from_structure(structure)
    data = train.with_gates(structure)
    basis = input_basis(train.x, 16)
    assert torch.allclose(basis.T @ basis, torch.eye(16), atol=1e-4)
    correction = SubspaceCorrection(block, basis)
    with torch.no_grad():
        correction.inner.theta.normal_(std=0.01)
        correction.inner.bias.normal_(std=0.1)
    packed = torch.cat([train.x @ basis, block(train.x, gates=data.gates.take(slice(None)))], dim=1)
    expected = correction(packed, gates=data.gates.take(slice(None)))
    correction.fold(block)
    assert torch.allclose(block(train.x), expected, atol=1e-4)


def test_subspace_phase_keeps_the_warm_start(digits_sets: tuple[DeviceSet, DeviceSet], tmp_path) -> None:  # noqa: ANN001
    train, val = digits_sets
    structure = trained_structure(train, val, epochs=3)
    cfg = QuantitativeConfig(solver="adam", epochs=2, batch_size=256, input_rank=16)
    block = GLAIBlock.from_structure(structure)
    hooks = RecordingHooks()
    result = quantitative_phase(block, train, val, cfg, hooks, checkpoint=tmp_path / "q.safetensors")
    assert result.extra["subspace_rank"] == 16 and result.model is block
    assert evaluate(block, val.x, val.y)[1] == pytest.approx(result.best_accuracy)
    assert result.best_accuracy >= hooks.events[0].metrics["val_accuracy"]
    again = quantitative_phase(GLAIBlock.from_structure(structure), train, val, cfg, RecordingHooks(),
                               checkpoint=tmp_path / "q.safetensors")
    assert again.skipped and torch.equal(again.model.theta, block.theta)


def test_exact_kernel_products_run_without_tf32_and_restore_the_flag() -> None:
    """The dual solve's input kernel is computed with TF32 off whatever the job's precision set, and the
    job's setting is back afterwards (also when the block raises)."""
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with full_fp32_matmul():
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(RuntimeError), full_fp32_matmul():
            raise RuntimeError("solve failed")
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
