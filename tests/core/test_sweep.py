"""Sweeps in one job (glai_core.sweep): a grid of GLAI and MLP heads trained side by side in one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glai_core.config import QuantitativeConfig, TrainConfig
from glai_core.cost_model import choose_phase2
from glai_core.data import LoadedData, builtin
from glai_core.defaults import quantitative_settings
from glai_core.halving import Halving, cut
from glai_core.hooks import RecordingHooks
from glai_core.metrics import evaluate
from glai_core.model import GLAIBlock
from glai_core.solvers import ridge_fit
from glai_core.stacked import StackedGLAI, StackedMLP, init_heads
from glai_core.stacked_ridge import stacked_dual_fit
from glai_core.sweep import HeadResult, grid, pareto, phase2_method, run_sweep
from glai_core.train import DeviceSet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> LoadedData:
    data = builtin("digits")
    return LoadedData(np.asarray(data.x[:700]), np.asarray(data.y[:700]), class_names=list(data.class_names))


def _config() -> TrainConfig:
    config = TrainConfig()
    config.device = "cpu"
    config.pruning.enabled = False
    config.architecture.hidden = [64]
    config.structural.max_epochs = 12
    config.baseline.max_epochs = 12
    return config


def test_the_grid_crosses_glai_settings_and_gives_mlps_lr_and_seed_only() -> None:
    config = TrainConfig()
    heads = grid({"lr": [1e-3, 3e-3], "reduction_factor": ["auto", 2.0], "seed": [0, 1]}, config, 64, 10,
                 1000,
                 1e-3, 1e-3, with_mlp=True)
    glai = [h for h in heads if h.kind == "glai"]
    mlp = [h for h in heads if h.kind == "mlp"]
    assert len(glai) == 8 and len(mlp) == 4
    assert {h.hidden for h in glai} == {(30,), (128,)} and {h.hidden for h in mlp} == {(256,)}
    assert [h.id for h in heads] == list(range(12))


def test_a_sweep_trains_every_head_with_its_own_curves_and_stopping(digits: LoadedData) -> None:
    hooks = RecordingHooks()
    sweep = {"lr": [1e-3, 1e-2], "seed": [0, 1]}
    result = run_sweep(digits, _config(), sweep, hooks)
    report = result.summary["sweep"]
    heads = report["heads"]
    assert [h["kind"] for h in heads] == ["glai"] * 4 + ["mlp"] * 4
    assert hooks.phases[:2] == ["structural",
                                "quantitative"] and "baseline" in [e.phase for e in hooks.events]
    series = {name for event in hooks.events for name in event.metrics}
    for head in heads:
        assert f"h{head['id']}/val_accuracy" in series
        assert 0.5 < head["val_accuracy"] <= 1.0 and head["params"] > 0 and head["seconds"] > 0
    glai_epochs = {h["epochs"]["structural"] for h in heads if h["kind"] == "glai"}
    mlp_epochs = {h["epochs"]["baseline"] for h in heads if h["kind"] == "mlp"}
    assert len(glai_epochs | mlp_epochs) > 1  # each head stopped on its own
    best = report["best"]
    assert best["glai"] in report["front"]["glai"] and best["mlp"] in report["front"]["mlp"]
    best_glai = max((h for h in heads if h["kind"] == "glai"), key=lambda h: h["val_accuracy"])
    assert result.summary["glai_accuracy"] == pytest.approx(best_glai["val_accuracy"])
    assert isinstance(result.glai, GLAIBlock) and result.baseline is not None
    # the kept models are the reported ones, on the validation rows the sweep used
    assert evaluate(result.glai, result.val.x,
                    result.val.y)[1] == pytest.approx(result.summary["glai_accuracy"])
    assert evaluate(result.baseline, result.val.x, result.val.y)[1] == \
        pytest.approx(result.summary["baseline_accuracy"])


def test_a_head_of_a_sweep_starts_as_its_own_job_would() -> None:
    """Initialisation per head: the seed's StructuralMLP, as ``structural_phase`` builds it."""
    from glai_core.model import StructuralMLP

    heads = init_heads(8, [[5], [9]], 3, [4, 7])
    torch.manual_seed(7)
    alone = StructuralMLP(8, [9], 3)
    for got, expected in zip(heads[1].parameters(), alone.parameters(), strict=True):
        assert torch.equal(got, expected)


def test_the_batched_closed_form_is_each_heads_dual_ridge(digits: LoadedData) -> None:
    torch.manual_seed(0)
    x = torch.from_numpy(digits.x[:300]).float()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    y = torch.from_numpy(digits.y[:300]).long()
    val_x = torch.from_numpy(digits.x[300:400]).float()
    val_x = (val_x - val_x.mean(0)) / val_x.std(0).clamp_min(1e-6)
    val_y = torch.from_numpy(digits.y[300:400]).long()
    structures = init_heads(64, [[6], [9]], 10, [0, 1])
    blocks = [GLAIBlock.from_structure(s) for s in structures]
    stacked = StackedGLAI.from_blocks(blocks)
    shapes = StackedMLP.from_heads(structures)
    dims = [6 * 65, 9 * 65]
    report = stacked_dual_fit(stacked, dims, x, y, shapes.gates(x), val_x, val_y, shapes.gates(val_x), [0.1,
                                                                                                        1.0])
    for k, (structure, block) in enumerate(zip(structures, blocks, strict=True)):
        train, val = DeviceSet(x, y).with_gates(structure), DeviceSet(val_x, val_y).with_gates(structure)
        expected = ridge_fit(block, train, val, [0.1, 1.0], True, method="dual")
        assert report[k]["ridge_lambda"] == expected.relative_lambda
        theta, bias = stacked.head_theta(k)
        torch.testing.assert_close(theta, block.theta, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(bias, block.bias, rtol=1e-3, atol=1e-5)


def test_the_front_keeps_the_heads_nothing_beats() -> None:
    from glai_core.sweep import Head

    def result(i: int, acc: float, params: int, seconds: float) -> HeadResult:
        return HeadResult(Head(i, "glai", 1e-3, 0), val_accuracy=acc, params=params, seconds=seconds)

    results = [result(0, 0.9, 100, 1.0), result(1, 0.95, 200, 1.0), result(2, 0.89, 150, 2.0),
               result(3, 0.9, 100, 1.0)]
    assert pareto(results) == [0, 1, 3]  # 2 is beaten by 0 on everything; 0 and 3 tie


@pytest.mark.parametrize(("n", "d", "hidden", "m", "job", "sweep"), [
    (3_000, 784, [26], 10, "adam", "adam"),  # mnist-5k's shape: a job runs Adam alone, so do the heads
    (1_078, 64, [30], 10, "ridge+lbfgs", "dual"),  # digits': a job starts from the closed form
])
def test_the_sweeps_phase2_follows_what_a_job_would_run(n: int, d: int, hidden: list[int], m: int, job: str,
                                                        sweep: str) -> None:
    cfg = quantitative_settings(QuantitativeConfig(), n)
    assert choose_phase2(n, n // 3, d, hidden, m, cfg)[0] == job
    assert phase2_method(n, n // 3, d, hidden, m, cfg) == sweep


def test_rungs_are_first_times_powers_of_eta_and_the_cut_keeps_the_best_share() -> None:
    halving = Halving(eta=2, first_rung=3)
    assert [e for e in range(1, 30) if halving.is_rung(e, patience=9)] == [3, 6, 12, 24]
    assert [e for e in range(1, 20) if Halving(eta=3).is_rung(e, patience=3)] == [2, 6, 18]  # half of it
    scores = {0: (0.9, 0.3), 1: (0.95, 0.2), 2: (0.9, 0.25), 3: (0.5, 1.0), 4: (0.7, 0.9)}
    assert cut(scores, 2) == {1, 2}  # 5 // 2 heads: the best accuracy, then the lower loss breaks the tie
    assert cut(scores, 8) == {1}  # never fewer than one
    assert Halving.from_spec(None) is None and Halving.from_spec({"enabled": False}) is None
    with pytest.raises(ValueError, match="eta"):
        Halving(eta=1)


def test_halving_cuts_the_weaker_heads_at_each_rung_and_keeps_finished_ones(digits: LoadedData) -> None:
    sweep = {"lr": [3e-4, 1e-3, 3e-3, 1e-2], "seed": [0, 1]}
    full = run_sweep(digits, _config(), sweep, RecordingHooks())
    hooks = RecordingHooks()
    result = run_sweep(digits, _config(), {**sweep, "halving": {"eta": 2, "first_rung": 2}}, hooks)
    report = result.summary["sweep"]
    assert report["grid"] == sweep and report["halving"]["eta"] == 2
    rungs = report["halving"]["rungs"]
    by_id = {h["id"]: h for h in report["heads"]}
    for kind in ("glai", "mlp"):
        first = next(r for r in rungs if r["kind"] == kind)
        assert first["epoch"] == 2 and first["ranked"] == 8 and len(first["kept"]) == 4
        cut_heads = [h for h in report["heads"] if h["kind"] == kind and h["pruned_at"] is not None]
        assert cut_heads, kind
        for head in cut_heads:  # a head cut at a rung trained no further and has no phase 2
            rung = next(r for r in rungs if r["kind"] == kind and r["epoch"] == head["pruned_at"])
            assert head["id"] in rung["stopped"] and "halving" in head["stopped_by"].values()
            assert max(by_id[k]["val_accuracy"] for k in rung["kept"]) >= head["val_accuracy"]
            assert head["id"] not in report["front"][kind]
        assert by_id[report["best"][kind]]["pruned_at"] is None
    # the pass is shorter: fewer head-epochs than every head training to its own stop
    spent = sum(sum(h.epochs.values()) for h in result.heads)
    assert spent < sum(sum(h.epochs.values()) for h in full.heads)
    assert evaluate(result.glai, result.val.x,
                    result.val.y)[1] == pytest.approx(result.summary["glai_accuracy"])
    assert isinstance(result.glai, GLAIBlock)
    trained = [e.metrics["heads_training"] for e in hooks.events if e.phase == "baseline"]
    assert trained[0] == 8 and min(trained) <= 2


def test_halving_ranks_heads_across_widths_and_fits_only_the_survivors(digits: LoadedData) -> None:
    """Heads of two widths train in two stacks; a rung ranks them together and cuts in both."""
    sweep = {"lr": [1e-3, 1e-2], "reduction_factor": ["auto", 2.0], "halving": {"eta": 2, "first_rung": 1}}
    result = run_sweep(digits, _config(), sweep, RecordingHooks(), kinds=("glai",))
    rungs = result.summary["sweep"]["halving"]["rungs"]
    assert result.summary["sweep"]["halving"]["first_rung"] == {"glai": 1}  # no MLP heads, no MLP rung
    assert [(r["epoch"], r["ranked"], len(r["kept"])) for r in rungs[:2]] == [(1, 4, 2), (2, 2, 1)]
    widths = {h.head.hidden for h in result.heads if h.pruned_at is not None}
    assert len({h.head.hidden for h in result.heads}) == 2 and widths  # the cut reaches the stacks
    fitted = [h for h in result.heads if "quantitative" in h.epochs]
    assert len(fitted) == 1 and fitted[0].finished and fitted[0].model is result.glai
