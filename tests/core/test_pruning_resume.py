"""A resumed pipeline never reruns a finished pruning sweep (the phase went ``baseline -> pruning ->
baseline``), and a sweep stopped between levels resumes after the levels it finished, with the same
results as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest

from glai_core.config import TrainConfig
from glai_core.data import LoadedData, builtin
from glai_core.hooks import Cancelled, RecordingHooks
from glai_core.pipeline import run_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits() -> LoadedData:
    data = builtin("digits")
    data.x, data.y = data.x[:600], data.y[:600]
    return data


def _config(baseline: bool = True) -> TrainConfig:
    return TrainConfig.from_dict({
        "architecture": {"hidden": [32]},
        "structural": {"max_epochs": 3, "min_epochs": 1, "batch_size": 128},
        "quantitative": {"epochs": 1, "batch_size": 128, "ridge_lambda_search": 0},
        "pruning": {"enabled": True, "sparsities": [0.25, 0.5, 0.75], "finetune_epochs": 1},
        "baseline": {"enabled": baseline, "max_epochs": 6, "batch_size": 128, "patience": 100},
        "device": "cpu", "precision": "fp32",
    })


def _first_event(hooks: RecordingHooks, phase: str) -> int:
    return next(i for i, event in enumerate(hooks.events) if event.phase == phase)


def test_a_job_resumed_in_the_baseline_does_not_prune_again(digits: LoadedData, tmp_path: Path) -> None:
    probe = RecordingHooks()
    run_pipeline(digits, _config(), probe)
    first = RecordingHooks(checkpoint_dir=tmp_path, stop_after=_first_event(probe, "baseline") + 2)
    with pytest.raises(Cancelled):
        run_pipeline(digits, _config(), first)
    assert first.phases[-1] == "baseline"
    again = RecordingHooks(checkpoint_dir=tmp_path)
    result = run_pipeline(digits, _config(), again)
    assert again.phases == ["baseline"]  # structural, quantitative and pruning reloaded, not announced
    assert [e.phase for e in again.events] == ["baseline"] * len(again.events)
    assert [(r.sparsity, r.accuracy) for r in result.pruned] == [
        (r.sparsity, r.accuracy) for r in run_pipeline(digits, _config(), RecordingHooks()).pruned]
    assert all(r.model.theta.shape[1] < result.glai.theta.shape[1] for r in result.pruned)


def test_a_sweep_stopped_between_levels_runs_only_the_rest(digits: LoadedData, tmp_path: Path) -> None:
    probe = RecordingHooks()
    reference = run_pipeline(digits, _config(baseline=False), probe)
    first = RecordingHooks(checkpoint_dir=tmp_path, stop_after=_first_event(probe, "pruning") + 1)
    with pytest.raises(Cancelled):
        run_pipeline(digits, _config(baseline=False), first)
    again = RecordingHooks(checkpoint_dir=tmp_path)
    result = run_pipeline(digits, _config(baseline=False), again)
    assert [e.step for e in again.events if e.phase == "pruning"] == [2, 3]  # level 1 was kept
    assert [(r.sparsity, r.accuracy, r.trainable_params) for r in result.pruned] == [
        (r.sparsity, r.accuracy, r.trainable_params) for r in reference.pruned]
