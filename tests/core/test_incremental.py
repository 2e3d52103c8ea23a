"""Sufficient statistics, incremental retraining on a frozen structure, and merging (glai_core).

The closed form's promise is exactness: sums over parts equal the sums over their union, the solve from
summed statistics equals ``ridge_fit`` on the union's rows, and two halves merged give the union's model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from glai_core import statistics as stats_lib
from glai_core.config import TrainConfig
from glai_core.data import LoadedData, builtin
from glai_core.hooks import RecordingHooks
from glai_core.incremental import Parent, Plan, grow_classes, plan, run_incremental
from glai_core.merge import MergeError, Source, merge
from glai_core.metrics import evaluate
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.parts import Part, concat, place_part, split, union_classes
from glai_core.preprocess import Standardizer
from glai_core.solvers import normal_equations, ridge_fit

pytestmark = pytest.mark.usefixtures("one_thread")
LAMBDAS = [0.01, 0.1, 1.0]


@pytest.fixture(scope="module")
def digits() -> LoadedData:
    data = builtin("digits")
    return LoadedData(np.asarray(data.x[:900]), np.asarray(data.y[:900]), class_names=list(data.class_names))


def _structure(d: int, m: int, seed: int = 0, hidden: int = 12) -> StructuralMLP:
    torch.manual_seed(seed)
    return StructuralMLP(d, [hidden], m).double().float()


def _halves(data: LoadedData) -> tuple[LoadedData, LoadedData]:
    return (LoadedData(data.x[:450], data.y[:450], class_names=data.class_names),
            LoadedData(data.x[450:], data.y[450:], class_names=data.class_names))


def _placed(data: LoadedData, name: str, standardizer: Standardizer, classes: list[str] | None = None):
    return place_part(data, Part(name, seed=0, validation_fraction=0.2), classes or list(data.class_names),
                      standardizer)


def test_sums_over_parts_equal_the_sums_over_their_union(digits: LoadedData) -> None:
    standardizer = Standardizer.fit(digits.x)
    a, b = (_placed(h, n, standardizer) for h, n in zip(_halves(digits), "ab", strict=True))
    block = GLAIBlock.from_structure(_structure(64, 10))
    names = list(digits.class_names)
    union = concat([a.train, b.train]).with_gates(block.structure)
    gram, rhs = normal_equations(block, union)
    total = stats_lib.combine([stats_lib.compute(block, a.train, names, [a.part.to_dict()]),
                               stats_lib.compute(block, b.train, names, [b.part.to_dict()])])
    assert total.rows == len(union)
    torch.testing.assert_close(total.gram, gram, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(total.rhs, rhs, rtol=1e-12, atol=1e-9)
    with pytest.raises(stats_lib.StatisticsError, match="twice"):
        stats_lib.combine([total, stats_lib.compute(block, a.train, names, [a.part.to_dict()])])


def test_the_solve_from_statistics_is_ridge_fit_on_the_rows(digits: LoadedData) -> None:
    standardizer = Standardizer.fit(digits.x)
    part = _placed(digits, "all", standardizer)
    structure = _structure(64, 10, seed=3)
    reference = GLAIBlock.from_structure(structure)
    train, val = part.train.with_gates(structure), part.val.with_gates(structure)
    expected = ridge_fit(reference, train, val, LAMBDAS, True, method="cholesky")
    block = GLAIBlock.from_structure(structure)
    got = stats_lib.solve(block, stats_lib.compute(block, train, digits.class_names), val, LAMBDAS)
    assert got.relative_lambda == expected.relative_lambda
    assert got.val_accuracy == expected.val_accuracy
    torch.testing.assert_close(block.theta, reference.theta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(block.bias, reference.bias, rtol=1e-4, atol=1e-6)


def test_merging_two_halves_gives_the_union_fit(digits: LoadedData) -> None:
    """The bar: two copies of one structure, fitted on halves, merge into the ridge fit of the union."""
    standardizer = Standardizer.fit(digits.x)
    halves = _halves(digits)
    a, b = (_placed(h, n, standardizer) for h, n in zip(halves, "ab", strict=True))
    structure = _structure(64, 10, seed=1)
    names = [str(c) for c in digits.class_names]
    sources = []
    for placed, name in ((a, "job-a"), (b, "job-b")):
        block = GLAIBlock.from_structure(structure)
        ridge_fit(block, placed.train.with_gates(structure), placed.val.with_gates(structure), LAMBDAS)
        sums = stats_lib.compute(block, placed.train, names, [placed.part.to_dict()])
        sources.append(Source(name, block, names, sums, [placed]))
    config = TrainConfig()
    config.quantitative.ridge_lambda, config.quantitative.ridge_lambda_search = 0.1, 1
    merged = merge(sources, standardizer, config, RecordingHooks())
    union = GLAIBlock.from_structure(structure)
    train = concat([a.train, b.train]).with_gates(structure)
    val = concat([a.val, b.val]).with_gates(structure)
    expected = ridge_fit(union, train, val, config.quantitative.ridge_lambdas, True, method="cholesky")
    assert merged.summary["merge"]["method"] == "summed_statistics"
    assert merged.summary["merge"]["ridge_lambda"] == expected.relative_lambda
    torch.testing.assert_close(merged.glai.theta, union.theta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(merged.glai.bias, union.bias, rtol=1e-4, atol=1e-6)
    parts = merged.summary["merge"]["parts"]
    assert [p["job_id"] for p in parts] == ["job-a", "job-b"]
    for entry, placed in zip(parts, (a, b), strict=True):
        assert entry["merged_val_accuracy"] == pytest.approx(evaluate(union, placed.val.x, placed.val.y)[1])
    with pytest.raises(MergeError, match="twice"):
        merge([sources[0], Source("job-c", sources[0].block, names, sources[0].statistics, [a])],
              standardizer, config, RecordingHooks())
    other = Source("job-d", GLAIBlock.from_structure(_structure(64, 10, seed=9)), names, None, [b])
    with pytest.raises(MergeError, match="share one structure"):
        merge([sources[0], other], standardizer, config, RecordingHooks())


def test_merge_without_statistics_refits_on_the_union_and_says_so(digits: LoadedData) -> None:
    standardizer = Standardizer.fit(digits.x)
    a, b = (_placed(h, n, standardizer) for h, n in zip(_halves(digits), "ab", strict=True))
    structure = _structure(64, 10, seed=2)
    names = [str(c) for c in digits.class_names]
    sources = [Source(n, GLAIBlock.from_structure(structure), names, None, [p]) for n, p in (("x", a), ("y",
                                                                                                        b))]
    config = TrainConfig()
    config.quantitative.solver = "lbfgs"
    config.quantitative.lbfgs_iterations = 10
    merged = merge(sources, standardizer, config, RecordingHooks())
    assert merged.summary["merge"]["method"] == "refit"
    assert "no statistics" in merged.summary["merge"]["what"]
    assert merged.summary["glai_accuracy"] >= merged.summary["warm_start_accuracy"]


def test_incremental_statistics_use_only_the_new_rows_and_match_the_union_fit(digits: LoadedData) -> None:
    standardizer = Standardizer.fit(digits.x[:450])
    first, second = _halves(digits)
    names = [str(c) for c in digits.class_names]
    old = _placed(first, "old", standardizer)
    structure = _structure(64, 10, seed=4)
    parent_block = GLAIBlock.from_structure(structure)
    parent_stats = stats_lib.compute(parent_block, old.train, names, [old.part.to_dict()])
    old_val_only = place_part(first, old.part, names, standardizer, with_train=False)
    assert old_val_only.train is None and old_val_only.train_rows == len(old.train)
    new = _placed(second, "new", standardizer)
    parent = Parent(parent_block, standardizer, names, parent_stats)
    config = TrainConfig()
    hooks = RecordingHooks()
    result = run_incremental(parent, [old_val_only], [new], names, config, hooks, mode="statistics")
    info = result.summary["incremental"]
    assert info["mode"] == "statistics" and info["new_train_rows"] == len(new.train)
    assert info["rows_added"] == len(new.train) + len(new.val)
    assert result.statistics is not None and result.statistics.rows == len(old.train) + len(new.train)
    assert hooks.phases == ["quantitative"]
    union = GLAIBlock.from_structure(structure)
    val = concat([old.val, new.val]).with_gates(structure)
    expected = ridge_fit(union, concat([old.train, new.train]).with_gates(structure), val,
                         config.quantitative.ridge_lambdas, True, method="cholesky")
    union_accuracy = evaluate(union, val.x, val.y)[1]
    assert expected.val_accuracy > result.summary["warm_start_accuracy"]  # a random S: the closed form wins
    torch.testing.assert_close(result.glai.theta, union.theta, rtol=1e-4, atol=1e-6)
    assert result.summary["glai_accuracy"] == pytest.approx(union_accuracy)
    assert info["parts"][1]["val_rows"] == len(new.val)


def test_refit_mode_warm_starts_from_the_parent_and_never_ends_below_it(digits: LoadedData) -> None:
    standardizer = Standardizer.fit(digits.x[:450])
    first, second = _halves(digits)
    names = [str(c) for c in digits.class_names]
    old, new = _placed(first, "old", standardizer), _placed(second, "new", standardizer)
    parent_block = GLAIBlock.from_structure(_structure(64, 10, seed=5))
    config = TrainConfig()
    config.quantitative.solver = "lbfgs"
    config.quantitative.lbfgs_iterations = 10
    result = run_incremental(Parent(parent_block, standardizer, names, None), [old], [new], names, config,
                             RecordingHooks())
    assert result.summary["incremental"]["mode"] == "refit"
    assert result.summary["glai_accuracy"] >= result.summary["warm_start_accuracy"]
    assert result.statistics is None
    with pytest.raises(ValueError, match="training rows"):
        run_incremental(Parent(parent_block, standardizer, names, None),
                        [place_part(first, old.part, names, standardizer, with_train=False)], [new], names,
                        config, RecordingHooks())


def test_a_refit_trains_in_the_jobs_precision(digits: LoadedData) -> None:
    """A child's phase 2 runs its steps as a fresh job's would (bf16 products where asked or native), not
    always in fp32: the two precisions end at different weights, and the summary says which ran."""
    standardizer = Standardizer.fit(digits.x[:450])
    first, second = _halves(digits)
    names = [str(c) for c in digits.class_names]
    old, new = _placed(first, "old", standardizer), _placed(second, "new", standardizer)
    parent_block = GLAIBlock.from_structure(_structure(64, 10, seed=5))
    thetas = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig()
        config.precision = precision  # type: ignore[assignment]
        config.quantitative.solver, config.quantitative.epochs = "adam", 2
        result = run_incremental(Parent(parent_block, standardizer, names, None), [old], [new], names, config,
                                 RecordingHooks())
        assert result.summary["training_precision"] == precision
        assert result.summary["phase2_solver"] == "adam"
        thetas[precision] = result.glai.effective_theta().detach().clone()
    assert not torch.equal(thetas["fp32"], thetas["bf16"])


def test_a_superset_of_classes_gets_new_output_rows(digits: LoadedData) -> None:
    """A parent on classes 0-4; the child's data adds 5-9: old outputs keep their function, the new
    classes start at zero and are fitted from the statistics."""
    keep = digits.y < 5
    old_data = LoadedData(digits.x[keep][:300], digits.y[keep][:300], class_names=list(range(5)))
    new_data = LoadedData(digits.x[450:], digits.y[450:], class_names=list(range(10)))
    standardizer = Standardizer.fit(old_data.x)
    old_names = [str(c) for c in range(5)]
    classes = union_classes(old_names, new_data.class_names)
    assert classes == [str(c) for c in range(10)]
    old = _placed(old_data, "old", standardizer)
    parent_block = GLAIBlock.from_structure(_structure(64, 5, seed=6))
    grown = grow_classes(parent_block, 10)
    x = old.val.x
    torch.testing.assert_close(grown(x)[:, :5], parent_block(x))
    assert torch.count_nonzero(grown(x)[:, 5:]) == 0
    parent_stats = stats_lib.compute(parent_block, old.train, old_names, [old.part.to_dict()])
    new = _placed(new_data, "new", standardizer, classes)
    result = run_incremental(Parent(parent_block, standardizer, old_names, parent_stats),
                             [place_part(old_data, old.part, classes, standardizer, with_train=False)], [new],
                             classes, TrainConfig(), RecordingHooks(), mode="statistics")
    assert result.glai.out_features == 10
    assert result.summary["incremental"]["classes_added"] == [str(c) for c in range(5, 10)]
    assert result.summary["glai_accuracy"] > 0.5


def test_statistics_files_round_trip_and_refuse_anything_else(tmp_path: Path, digits: LoadedData) -> None:
    standardizer = Standardizer.fit(digits.x)
    part = _placed(digits, "all", standardizer)
    block = GLAIBlock.from_structure(_structure(64, 10))
    sums = stats_lib.compute(block, part.train, digits.class_names, [part.part.to_dict()])
    path = stats_lib.save(tmp_path / "statistics.safetensors", sums)
    loaded = stats_lib.load(path)
    assert torch.equal(loaded.gram, sums.gram) and torch.equal(loaded.rhs, sums.rhs)
    assert (loaded.rows, loaded.class_names, loaded.structure, loaded.parts) == \
        (sums.rows, sums.class_names, sums.structure, sums.parts)
    pickled = tmp_path / "pickle.safetensors"
    torch.save({"gram": sums.gram}, pickled)
    with pytest.raises(stats_lib.StatisticsError):
        stats_lib.load(pickled)
    from safetensors.torch import save_file
    bad = tmp_path / "bad.safetensors"
    meta = stats_lib.read_metadata(path)
    import json
    save_file({"gram": sums.gram[:5, :5].contiguous(), "rhs": sums.rhs}, str(bad),
              metadata={stats_lib.METADATA_KEY: json.dumps(meta)})
    with pytest.raises(stats_lib.StatisticsError, match="do not match"):
        stats_lib.load(bad)


def test_the_structure_digest_ignores_the_head_and_sees_the_hidden_layers() -> None:
    structure = _structure(8, 3)
    other = copy.deepcopy(structure)
    with torch.no_grad():
        other.layers[-1].weight.add_(1.0)
    assert stats_lib.structure_digest(structure) == stats_lib.structure_digest(other)
    with torch.no_grad():
        other.layers[0].weight[0, 0] += 1e-6
    assert stats_lib.structure_digest(structure) != stats_lib.structure_digest(other)


def test_modes_are_chosen_from_what_the_parent_kept() -> None:
    from glai_core.config import QuantitativeConfig

    sums = stats_lib.Statistics(torch.eye(3, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64), 1,
                                ["a", "b"], "abc")
    shape = {"n_new": 400, "n_union": 800, "n_val": 200, "d": 8, "hidden": [4], "m": 2}

    def chosen(requested: str, solver: str, statistics: object, digest: str) -> Plan:
        return plan(requested, QuantitativeConfig(solver=solver), statistics, digest, **shape)  # type: ignore

    # The closed form from the statistics where the job's phase 2 is the closed form and they are kept...
    assert chosen("auto", "ridge", sums, "abc").mode == "statistics"
    # ...and not where they are missing or of another structure.
    assert chosen("auto", "ridge", None, "abc").mode == "refit"
    assert chosen("auto", "ridge", sums, "other").mode == "refit"
    # A first-order phase 2 on the union, or the squared-loss closed form from the new rows where that is
    # several times cheaper. Few path weights and many rows: the statistics; a wide block
    # (D = 64 * 512 + 1) on few rows: L-BFGS.
    cheap = plan("auto", QuantitativeConfig(solver="lbfgs"), sums, "abc", n_new=20000, n_union=40000,
                 n_val=10000, d=8, hidden=[4], m=2)
    assert (cheap.mode, cheap.solver) == ("statistics", "statistics") and "cheaper" in cheap.why
    wide = plan("auto", QuantitativeConfig(solver="lbfgs"), sums, "abc", n_new=200, n_union=400, n_val=100,
                d=64, hidden=[512], m=10)
    assert (wide.mode, wide.solver) == ("refit", "lbfgs") and "cross-entropy" in wide.why
    resolved = plan("auto", QuantitativeConfig(), sums, "abc", n_new=200, n_union=400, n_val=100, d=64,
                    hidden=[512], m=10)
    assert resolved.mode == "refit" and resolved.solver in ("lbfgs", "adam")
    # A job that names the closed form and then a first-order method refits with both, at the cost of both.
    named = plan("auto", QuantitativeConfig(solver="ridge+lbfgs"), sums, "abc", n_new=200, n_union=400,
                 n_val=100, d=64, hidden=[512], m=10)
    assert (named.mode, named.solver) == ("refit", "ridge+lbfgs")
    assert chosen("auto", "ridge+adam", sums, "abc").mode in ("refit", "statistics")
    # storms' shape: the statistics are cheaper, but not by STATISTICS_ADVANTAGE, so L-BFGS refits.
    storms = plan("auto", QuantitativeConfig(), sums, "abc", n_new=6250, n_union=12503, n_val=3125, d=8,
                  hidden=[57], m=9)
    assert (storms.mode, storms.solver) == ("refit", "lbfgs") and "at most 4x" in storms.why
    assert chosen("refit", "ridge", sums, "abc").mode == "refit"
    assert chosen("statistics", "lbfgs", sums, "abc").mode == "statistics"
    with pytest.raises(ValueError, match="no sufficient statistics"):
        chosen("statistics", "auto", None, "abc")
    with pytest.raises(ValueError, match="unknown incremental mode"):
        chosen("sometimes", "auto", sums, "abc")


def test_splits_reproduce_the_root_jobs_hold_out(digits: LoadedData) -> None:
    from glai_core.data import split_indices

    train, val = split(digits, Part("x", seed=3, validation_fraction=0.25))
    expected = split_indices(digits.y, 10, 0.25, 3)
    assert np.array_equal(train, expected[0]) and np.array_equal(val, expected[1])
    appended_train, appended_val = split(digits, Part("x", seed=3, validation_fraction=0.25, skip_rows=450))
    assert appended_train.min() >= 450 and appended_val.min() >= 450


def test_a_child_refits_with_lbfgs_unless_it_is_much_dearer_than_adam() -> None:
    from glai_core.config import QuantitativeConfig
    from glai_core.cost_model import CHILD_LBFGS_FACTOR, choose_child_solver, choose_phase2, phase2_seconds
    from glai_core.defaults import quantitative_settings

    def costs(n: int, d: int, hidden: list[int], m: int) -> tuple[str, str, float]:
        cfg = quantitative_settings(QuantitativeConfig(), n)
        est = phase2_seconds(n, n // 4, d, hidden, m, cfg)
        child = choose_child_solver(n, n // 4, d, hidden, m, cfg)
        return choose_phase2(n, n // 4, d, hidden, m, cfg)[0], child, est["lbfgs"] / est["adam"]

    # storms: a fresh job's phase 2 is Adam after the closed form; a child from fitted weights takes L-BFGS.
    fresh, child, ratio = costs(12503, 8, [57], 9)
    assert fresh == "ridge+adam" and child == "lbfgs" and 1 < ratio <= CHILD_LBFGS_FACTOR
    # mnist-5k's shape: L-BFGS's passes over D = 785 * 26 path weights cost well over twice Adam's epochs.
    fresh, child, ratio = costs(3200, 784, [26], 10)
    assert child == "adam" and ratio > CHILD_LBFGS_FACTOR
    # A solver the job names is kept.
    assert choose_child_solver(3200, 800, 8, [57], 9, QuantitativeConfig(solver="adam")) == "adam"
