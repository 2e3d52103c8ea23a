"""The phase-2 solvers that use convexity: full-batch L-BFGS on cross-entropy and block-Jacobi PCG for
ridge, each against an exact reference on small data; the cost model's choice between them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glai_core.cg import cg_solve, unit_grams
from glai_core.config import QuantitativeConfig
from glai_core.cost_model import choose_phase2
from glai_core.hooks import Cancelled, Hooks, RecordingHooks
from glai_core.lbfgs import LbfgsSettings, lbfgs_fit
from glai_core.metrics import GateCache, evaluate
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.paths import path_features
from glai_core.solvers import cholesky_solve, normal_equations, quantitative_phase, warm_prior
from glai_core.train import DeviceSet, FitSettings, fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def digits_block(train: DeviceSet, val: DeviceSet, epochs: int = 3, hidden: int = 12) -> GLAIBlock:
    torch.manual_seed(0)
    structure = StructuralMLP(train.x.shape[1], [hidden], 10)
    fit(structure, train, val, FitSettings(epochs=epochs, lr=1e-3, batch_size=64), Hooks(), "structural")
    return GLAIBlock.from_structure(structure)


def noisy_problem(n: int = 400, d: int = 4, m: int = 3, seed: int = 0) -> tuple[GLAIBlock, DeviceSet]:
    """Labels that no gated linear model separates, so the cross-entropy minimum is finite and unique."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    structure = StructuralMLP(d, [5], m)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    logits = x[:, :m] * 1.5
    y = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
    block = GLAIBlock.from_structure(structure.double())
    return block, DeviceSet(x, y, GateCache.build(block.structure, x))


def test_lbfgs_reaches_the_exact_cross_entropy_minimum() -> None:
    """Reference: scikit-learn's unpenalised multinomial logistic regression on the explicit path features,
    solved to tight tolerance. L-BFGS on the block must reach the same training loss."""
    from sklearn.linear_model import LogisticRegression

    block, data = noisy_problem()
    feats = path_features(data.x, data.gates.take(slice(None))).numpy()
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=20000).fit(feats, data.y.numpy())
    ref_logits = torch.from_numpy(reference.decision_function(feats))
    ref_loss = float(F.cross_entropy(ref_logits, data.y))

    settings = LbfgsSettings(max_iterations=500, eval_every=25, patience=1000)
    report = lbfgs_fit(block, data, settings, score=lambda _: True)
    with torch.no_grad():
        loss = float(F.cross_entropy(block(data.x, gates=data.gates.take(slice(None))), data.y))
    assert report.explicit_features
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    assert loss < float(F.cross_entropy(GLAIBlock.from_structure(block.structure)(data.x), data.y))


def test_lbfgs_explicit_features_and_block_contraction_agree() -> None:
    """The two ways of evaluating the objective (F W in one GEMM, or the block's contraction in chunks)
    follow the same iterates."""
    results = []
    for max_bytes in (512 * 1024**2, 0):
        block, data = noisy_problem(seed=1)
        report = lbfgs_fit(block, data, LbfgsSettings(max_iterations=30, eval_every=10, patience=10,
                                                      max_feature_bytes=max_bytes), score=lambda _: True)
        results.append((report.explicit_features, block.theta.detach().clone()))
    (explicit, a), (implicit, b) = results
    assert explicit and not implicit
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("solver", ["lbfgs", "ridge+lbfgs"])
def test_lbfgs_phase_keeps_its_best_point_and_resumes(digits_sets: tuple[DeviceSet, DeviceSet], solver: str,
                                                      tmp_path) -> None:  # noqa: ANN001
    train, val = digits_sets
    block = digits_block(train, val)
    structure = block.structure
    cfg = QuantitativeConfig(solver=solver, lbfgs_iterations=40, lbfgs_eval_every=5)  # type: ignore[arg-type]
    hooks = RecordingHooks()
    result = quantitative_phase(block, train, val, cfg, hooks)
    warm = hooks.events[0].metrics["val_accuracy"]
    final = evaluate(block, val.x, val.y)[1]
    assert final >= warm and final == pytest.approx(result.best_accuracy)
    assert final > warm + 0.05  # S after 3 epochs is far from what its gates allow
    assert result.extra["solver"] == solver and result.extra["lbfgs"]["iterations"] > 0
    assert [e.step for e in hooks.events] == list(range(len(hooks.events)))

    stopped = RecordingHooks(checkpoint_dir=tmp_path, stop_after=3)
    with pytest.raises(Cancelled):
        quantitative_phase(GLAIBlock.from_structure(structure), train, val, cfg, stopped,
                           checkpoint=tmp_path / "q.safetensors")
    resumed = GLAIBlock.from_structure(structure)
    again = quantitative_phase(resumed, train, val, cfg, RecordingHooks(checkpoint_dir=tmp_path),
                               checkpoint=tmp_path / "q.safetensors")
    assert again.resumed and again.best_accuracy >= warm
    assert [h["step"] for h in again.history] == list(range(len(again.history)))


def test_block_jacobi_grams_are_the_diagonal_blocks_of_the_centred_gram() -> None:
    block, data = noisy_problem(n=120)
    feats = path_features(data.x, data.gates.take(slice(None)))
    centred = feats - feats.mean(dim=0)
    width = block.in_features + 1
    mu = feats.mean(dim=0).view(block.theta.shape[1:]).expand(block.theta.shape)
    grams = unit_grams(block, data, mu)
    for prefix in range(grams.shape[0]):
        cols = slice(prefix * width, (prefix + 1) * width)
        assert torch.allclose(grams[prefix], centred[:, cols].T @ centred[:, cols], atol=1e-9)


@pytest.mark.parametrize("hidden", [[12], [6, 4]])
def test_preconditioned_cg_matches_cholesky_in_fewer_iterations(digits_sets: tuple[DeviceSet, DeviceSet],
                                                                hidden: list[int]) -> None:
    """On real, correlated inputs (digits) every preconditioner reaches the exact Cholesky solution; the
    Nystrom sketch needs a fraction of plain Jacobi's iterations, block-Jacobi somewhat fewer."""
    train, _ = digits_sets
    torch.manual_seed(0)
    structure = StructuralMLP(train.x.shape[1], hidden, 10).double()
    x = train.x[:600].double()
    data = DeviceSet(x, train.y[:600], GateCache.build(structure, x))
    block = GLAIBlock.from_structure(structure)
    gram, rhs = normal_equations(block, data)
    prior = warm_prior(block, gram, rhs, data)
    relative = 1e-2
    exact = cholesky_solve(gram, rhs, relative * float(gram.diagonal()[:-1].mean()), prior)
    iterations = {}
    for name in ("jacobi", "block", "nystrom"):
        info: dict = {}
        approx, _ = cg_solve(block, data, relative, prior, max_iter=3000, tol=1e-9, preconditioner=name,
                             info=info)
        assert float((approx - exact).norm() / exact.norm()) < 1e-5
        iterations[name] = info["iterations"]
    assert iterations["nystrom"] < 0.4 * iterations["jacobi"], iterations
    assert iterations["block"] < iterations["jacobi"], iterations


def test_cost_model_picks_lbfgs_for_small_tables_and_adam_for_large_splits() -> None:
    cfg = QuantitativeConfig(solver="auto", batch_size=32, epochs=10)
    small, info = choose_phase2(1100, 360, 64, [30], 10, cfg)  # digits: few rows, overhead-bound Adam steps
    assert small.endswith("lbfgs") and info["estimated_lbfgs_s"] < info["estimated_adam_s"]
    large_cfg = QuantitativeConfig(solver="auto", batch_size=512, epochs=10)
    large, info = choose_phase2(48000, 12000, 784, [26], 10, large_cfg)  # Fashion-MNIST pixels
    assert large == "adam" and info["estimated_adam_s"] < info["estimated_lbfgs_s"]
    assert choose_phase2(10, 10, 4, [3], 2, QuantitativeConfig(solver="lbfgs"))[0] == "lbfgs"
