"""Checkpoints of the pruning sweep, one level at a time, so a resumed job never reruns a finished sweep.

Before, pruning was not checkpointed: a job resumed during the baseline phase went back to pruning and
the job's phase read ``baseline -> pruning -> baseline``. Levels are independent (each prunes the same
trained block, ``glai_core.prune.pruning_sweep``), so a resumed sweep reloads the levels already done and
runs only the rest; a finished one is reloaded whole and not announced again.

Layout, beside the other phases' checkpoints:
* ``pruning.safetensors``: no tensors, the ``glai_checkpoint`` metadata of ``glai_core.checkpoint`` (a
  ``PhaseState`` whose history has one entry per level, ``finished`` once the sweep is done, and the
  levels' results under ``extra["levels"]``), so the worker's backfill and partial summaries read it like
  any phase;
* ``pruning/level-<k>.safetensors``: level k's pruned block, written by ``glai_core.artifacts.save_model``
  (no pickle) before the marker names it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from glai_core.artifacts import ArtifactError, load_artifact, save_model
from glai_core.checkpoint import META_KEY, PhaseState, load_checkpoint
from glai_core.model import GLAIBlock
from glai_core.prune import PruneResult


@dataclass
class SavedSweep:
    state: PhaseState
    results: list[PruneResult]


def level_path(checkpoint: Path, index: int) -> Path:
    """``<dir>/pruning/level-<index + 1>.safetensors`` for the marker ``<dir>/pruning.safetensors``."""
    return checkpoint.with_suffix("") / f"level-{index + 1}.safetensors"


def _write_marker(checkpoint: Path, state: PhaseState) -> None:
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    meta = json.dumps({"state": asdict(state), "optimizer_groups": None})
    save_file({}, str(tmp), metadata={META_KEY: meta})
    os.replace(tmp, checkpoint)


def save_level(checkpoint: Path, state: PhaseState, results: list[PruneResult]) -> None:
    """Write the newest level's block, then the marker listing every level so far (each write atomic)."""
    index = len(results) - 1
    target = level_path(checkpoint, index)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_model(target, results[index].model)
    state.extra["levels"] = [{"sparsity": r.sparsity, "accuracy": r.accuracy,
                              "accuracy_before_finetune": r.accuracy_before_finetune,
                              "trainable_params": r.trainable_params} for r in results]
    _write_marker(checkpoint, state)


def mark_finished(checkpoint: Path, state: PhaseState) -> None:
    state.finished, state.stopped_by = True, "sweep"
    _write_marker(checkpoint, state)


def load_sweep(checkpoint: Path | None, sparsities: list[float], device: torch.device,
               dtype: torch.dtype) -> SavedSweep | None:
    """The levels saved for this sweep, or None (no checkpoint, or one that does not match the sweep or
    cannot be read: the sweep then starts over)."""
    saved = load_checkpoint(checkpoint)
    if checkpoint is None or saved is None:
        return None
    levels = saved.state.extra.get("levels") or []
    if [float(level["sparsity"]) for level in levels] != [float(s) for s in sparsities[:len(levels)]]:
        return None
    results = []
    for index, level in enumerate(levels):
        try:
            model = load_artifact(level_path(checkpoint, index), device=device).model
        except ArtifactError:
            return None
        assert isinstance(model, GLAIBlock)
        model.to(dtype=dtype)
        results.append(PruneResult(sparsity=float(level["sparsity"]), accuracy=float(level["accuracy"]),
                                   accuracy_before_finetune=float(level["accuracy_before_finetune"]),
                                   trainable_params=int(level["trainable_params"]), model=model))
    state = saved.state
    state.finished = state.finished and len(results) == len(sparsities)
    return SavedSweep(state, results)
