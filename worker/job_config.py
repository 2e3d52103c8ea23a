"""The ``config.json`` artifact: every setting a job actually ran with, in one file.

The stored spec keeps ``null`` for each ``"auto"`` field (chosen from the data when the job runs), and the
summary's ``effective_settings`` lists the chosen values of the adapted sections only. This file puts them
together: ``config`` is ``TrainConfig.to_dict()`` as it ran (no ``auto`` left: batch sizes, budgets,
patience, rates, the resolved reduction factor and device), so ``TrainConfig.from_dict(config)`` rebuilds
the run; ``requested`` is the spec as submitted; ``chosen`` says why each automatic value was picked.
"""

from __future__ import annotations

import copy
from typing import Any

from glai_core.defaults import ADAPTED  # the sections adapt fills in

FORMAT = "glai-job-config"
FORMAT_VERSION = 1
MATCH_KEYS = ("reference_hidden", "glai_hidden", "reduction_factor", "parameter_matched", "mlp_params",
              "glai_trainable_params", "structure_params")


def effective_config(config: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """``config`` (the TrainConfig the worker handed to the pipeline) with the values the pipeline chose."""
    resolved = copy.deepcopy(config.to_dict())
    effective = summary.get("effective_settings") or {}
    for section in ADAPTED:
        resolved[section].update(effective.get(section) or {})
    if summary.get("reduction_factor") is not None:
        resolved["architecture"]["reduction_factor"] = float(summary["reduction_factor"])
    return resolved


def job_config(job_id: str, dataset_id: str, spec: dict[str, Any], config: Any, summary: dict[str, Any],
               class_names: list[str], time_limit_s: int) -> dict[str, Any]:
    """The document written as ``jobs/<id>/config.json``."""
    effective = summary.get("effective_settings") or {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "job_id": job_id,
        "dataset_id": dataset_id,
        "backbone": spec.get("backbone"),
        "time_limit_s": int(time_limit_s),
        "config": effective_config(config, summary),
        "architecture": {key: summary.get(key) for key in MATCH_KEYS},
        "phase2_solver": summary.get("phase2_solver"),
        "training_precision": summary.get("training_precision"),
        "data": {**(effective.get("data") or {}), "class_names": [str(name) for name in class_names]},
        "chosen": dict(effective.get("chosen") or {}),
        "requested": spec,
    }
