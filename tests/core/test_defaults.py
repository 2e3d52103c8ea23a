"""Settings chosen from the data (glai_core.defaults): the rules, what a job records, and that a table of a
few hundred rows gets a structure that actually learns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glai_core.config import QuantitativeConfig, TrainConfig
from glai_core.data import LoadedData, builtin
from glai_core.defaults import (
    AUTO_FIELDS,
    RULES,
    adapt,
    adaptive_reduction,
    batch_size,
    child_settings,
    epochs_for,
    quantitative_settings,
)
from glai_core.hooks import RecordingHooks
from glai_core.model import glai_trainable_count, match_parameters, mlp_param_count
from glai_core.pipeline import architecture_match, run_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("n,expected", [(90, 16), (1_100, 32), (2_600, 64), (8_000, 256), (60_000, 512),
                                        (5, 5)])
def test_batch_is_a_power_of_two_near_n_over_32(n: int, expected: int) -> None:
    assert batch_size(n) == expected


def test_budgets_are_optimiser_steps_converted_to_epochs() -> None:
    assert epochs_for(300, 90, 16) == 50  # 6 steps per epoch
    assert epochs_for(300, 60_000, 512) == 3  # 118 steps per epoch
    assert epochs_for(300, 60_000, 512, floor=10) == 10
    assert epochs_for(10**9, 90, 16) == 1000  # never above the service's default epoch limit


def test_a_childs_phase2_budget_is_a_share_of_the_fresh_one_by_the_new_rows() -> None:
    fresh = quantitative_settings(QuantitativeConfig(), 3_200)
    assert fresh.epochs == 13  # 25 steps per epoch: 320 steps
    chosen: dict[str, str] = {}
    half = child_settings(QuantitativeConfig(), 1_600, 3_200, chosen)
    assert half.epochs == math.ceil(13 * 0.5 * RULES.child_budget_scale) == 5
    assert half.lbfgs_iterations == math.ceil(100 * 0.5 * RULES.child_budget_scale) == 38
    assert "50%" in chosen["quantitative.epochs"] and "50%" in chosen["quantitative.lbfgs_iterations"]
    few = child_settings(QuantitativeConfig(), 10, 3_200)
    assert few.lbfgs_iterations == RULES.min_child_lbfgs_iterations
    assert (half.batch_size, half.patience) == (fresh.batch_size, fresh.patience)  # as the fresh job's
    assert (fresh.lbfgs_patience, half.lbfgs_patience) == (3, RULES.child_lbfgs_patience) == (3, 2)
    assert "parent's fit" in chosen["quantitative.lbfgs_patience"]
    assert child_settings(QuantitativeConfig(), 100, 3_200).epochs == RULES.min_child_epochs
    given = QuantitativeConfig(epochs=20)
    assert child_settings(given, 1_600, 3_200).epochs == 20  # an explicit budget is kept


def test_unset_fields_are_chosen_and_explained_given_ones_kept() -> None:
    config = TrainConfig()
    config.structural.batch_size = 100
    config.baseline.max_epochs = 7
    resolved, effective = adapt(config, 1_200, 20, 4)
    chosen = effective["chosen"]
    assert resolved.structural.batch_size == 100 and "structural.batch_size" not in chosen
    assert resolved.baseline.max_epochs == 7 and "baseline.max_epochs" not in chosen
    assert resolved.quantitative.batch_size == 32 and "N=1,200" in chosen["quantitative.batch_size"]
    # the structure's floor is counted with *its* batch: 300 steps at 12 steps per epoch
    assert resolved.structural.min_epochs == 25
    for section, names in AUTO_FIELDS.items():
        for name in names:
            assert getattr(getattr(resolved, section), name) is not None
            assert effective[section][name] == getattr(getattr(resolved, section), name)
    assert effective["data"] == {"n_train": 1_200, "d": 20, "m": 4}
    assert config.structural.min_epochs is None  # the caller's config is not modified


def few_hundred_digits(rows: int = 300) -> LoadedData:
    data = builtin("digits")
    index = np.random.default_rng(0).choice(len(data.y), size=rows, replace=False)
    return LoadedData(data.x[index], data.y[index], None, None, list(data.class_names))


def test_a_few_hundred_rows_train_the_structure_well_above_chance() -> None:
    """300 digits (240 for training): with the fixed defaults of before (batch 512: one step per epoch,
    6 to 30 epochs) S made at most 30 steps; chosen from the data it makes hundreds, and learns."""
    data = few_hundred_digits()
    config = TrainConfig.from_dict({"pruning": {"enabled": False}, "baseline": {"enabled": False},
                                    "device": "cpu"})
    summary = run_pipeline(data, config, RecordingHooks()).summary
    fixed = TrainConfig.from_dict({**config.to_dict(),
                                   "structural": {"batch_size": 512, "min_epochs": 6, "max_epochs": 30}})
    before = run_pipeline(data, fixed, RecordingHooks()).summary
    assert summary["effective_settings"]["structural"]["batch_size"] == 16
    assert summary["structure_accuracy"] >= 0.75  # chance: 0.1
    assert summary["structure_accuracy"] >= before["structure_accuracy"] + 0.15
    assert summary["glai_accuracy"] >= 0.85


def test_adaptive_width_widens_low_d_structures_and_says_so() -> None:
    """An 8-feature, 9-class table of 11.7k rows: matching gives S 57 units; adaptive gives the reference's
    256 (one path weight per target would allow more, but S is never wider than the MLP)."""
    matched = match_parameters(8, [256], 9)
    chosen: dict[str, str] = {}
    adaptive = architecture_match(8, [256], 9, "adaptive", 11_722, chosen)
    assert matched.glai_hidden == [57] and matched.parameter_matched
    assert adaptive.glai_hidden == [256] and not adaptive.parameter_matched
    assert adaptive.glai_trainable_params == glai_trainable_count(8, [256], 9)
    assert adaptive.mlp_params == mlp_param_count(8, [256], 9)
    assert "not parameter-matched" in chosen["architecture.reduction_factor"]


def test_adaptive_width_follows_the_rows_between_its_bounds() -> None:
    d, hidden, m = 40, [256], 10
    p_mlp = mlp_param_count(d, hidden, m)
    few = architecture_match(d, hidden, m, "adaptive", 100)  # N m = 1,000: the floor, half the MLP
    assert few.glai_trainable_params == pytest.approx(0.5 * p_mlp, rel=0.1)  # units of m (d+1) = 410
    some = architecture_match(d, hidden, m, "adaptive", 3_000)  # N m = 30,000: between the bounds
    assert some.glai_trainable_params == pytest.approx(3_000 * m, rel=0.1)
    r, why = adaptive_reduction(d, hidden, m, 10**7)  # plenty of rows: the reference widths
    assert r == 1.0 and "reference widths" in why
    assert RULES.steps_per_epoch == 32
