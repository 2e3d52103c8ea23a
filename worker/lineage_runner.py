"""Jobs that are not one plain training run: incremental children, merges and sweeps; and the sufficient
statistics every job keeps for its children.

The spec says which (``kind_of``): ``lineage`` (a child of ``parent_job_id`` on its parent's frozen
structure), ``merge`` (copies of one structure merged) or ``sweep`` (a grid of heads in one pass). Each
loads what it reuses from storage (the parent's ``trained`` model and its ``statistics.safetensors``),
runs ``glai_core`` and exports through ``worker.export`` like any job. Statistics are written under
``jobs/<id>/statistics.safetensors`` when the path features fit ``GLAI_MAX_STATISTICS_BYTES`` and the job
did not ask to skip them; they are never an artifact to download, and go with the job when it is deleted.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from glai_common.job_kinds import KINDS, kind_of
from glai_common.models import Artifact, Dataset
from worker.context import WorkerContext
from worker.datasets import DatasetInfo, load_training_data
from worker.export import EXPORTING, export_result, heldout_rows
from worker.failures import UserError
from worker.hooks import DatabaseHooks
from worker.job_config import job_config

STATISTICS = "statistics.safetensors"


def statistics_key(job_id: str) -> str:
    return f"jobs/{job_id}/{STATISTICS}"


@dataclass
class Exported:
    """What ``worker.export.export_result`` reads from a result."""

    glai: Any
    standardizer: Any
    summary: dict[str, Any]
    baseline: Any = None
    pruned: list[Any] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ loading

def _download(ctx: WorkerContext, key: str, directory: Path) -> Path:
    target = directory / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-{Path(key).name}"
    ctx.storage.download_file(key, target)
    return target


def load_parent(ctx: WorkerContext, job_id: str, directory: Path, device: str) -> Any:
    """The ``Parent`` a child reuses: the job's trained block, standardiser, classes and statistics."""
    from glai_core import statistics
    from glai_core.artifacts import load_artifact
    from glai_core.incremental import Parent
    from glai_core.model import GLAIBlock
    from glai_core.preprocess import Standardizer

    with ctx.session() as session:
        key = session.scalar(select(Artifact.storage_key).where(Artifact.job_id == job_id,
                                                                Artifact.name == "trained"))
    if key is None:
        raise UserError(f"job {job_id} has no trained model any more (was it deleted?)")
    artifact = load_artifact(_download(ctx, key, directory), device)
    block = artifact.model
    if not isinstance(block, GLAIBlock):
        raise UserError(f"job {job_id}'s trained model is not a GLAI block")
    standardizer = artifact.standardizer or Standardizer.identity(block.in_features)
    sums = None
    if ctx.storage.exists(statistics_key(job_id)):
        sums = statistics.load(_download(ctx, statistics_key(job_id), directory), device)
    return Parent(block, standardizer, [str(c) for c in artifact.metadata["class_names"]], sums)


def _dataset_info(ctx: WorkerContext, dataset_id: str) -> DatasetInfo:
    with ctx.session() as session:
        row = session.get(Dataset, dataset_id)
        if row is None:
            raise UserError(f"dataset {dataset_id} of this job's lineage no longer exists")
        return DatasetInfo(row.id, row.kind, row.file_format, row.text_column, row.label_column,
                           row.storage_key)


@dataclass
class Loader:
    """One job's datasets, each read once: counting rows, checking an appended dataset and placing the
    parts all go through it (each read asks the database and the staging cache again otherwise)."""

    ctx: WorkerContext
    backbone: str | None
    hooks: DatabaseHooks
    device: str
    loaded: dict[str, Any] = field(default_factory=dict)

    def __call__(self, dataset_id: str) -> Any:
        if dataset_id not in self.loaded:
            info = _dataset_info(self.ctx, dataset_id)
            self.loaded[dataset_id] = load_training_data(self.ctx, info, self.backbone, self.hooks,
                                                         self.device).data
        return self.loaded[dataset_id]


def _place(load: Loader, parts: list[Any], classes: list[str], standardizer: Any,
           with_train: bool) -> list[Any]:
    from glai_core.parts import place_part

    return [place_part(load(p.dataset_id), p, classes, standardizer, load.device, with_train) for p in parts]


def _row_counts(load: Loader, parts: list[Any]) -> tuple[int, int]:
    """(training rows, validation rows) of the parts, from their splits alone: what ``plan`` weighs before
    any row is placed."""
    from glai_core.parts import split

    train = val = 0
    for part in parts:
        data = load(part.dataset_id)
        train_index, val_index = split(data, part)
        train += len(train_index)
        val += len(val_index) if val_index is not None else int(data.x_val.shape[0])
    return train, val


def check_appended(load: Loader, part: Any, repeated: Any) -> None:
    """An appended dataset must start with the rows of the part it extends, byte for byte (labels by
    class name): otherwise its "new" rows are not the new ones."""
    new = load(part.dataset_id)
    old = load(repeated.dataset_id)
    n = int(old.x.shape[0])
    if part.skip_rows != n or new.x.shape[0] <= n:
        raise UserError(f"dataset {part.dataset_id} does not extend dataset {repeated.dataset_id}'s {n} rows")
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        same_x = np.array_equal(np.asarray(new.x[start:stop]), np.asarray(old.x[start:stop]))
        new_labels = np.asarray(new.class_names, dtype=object)[np.asarray(new.y[start:stop])].astype(str)
        old_labels = np.asarray(old.class_names, dtype=object)[np.asarray(old.y[start:stop])].astype(str)
        if not same_x or not np.array_equal(new_labels, old_labels):
            raise UserError(f"dataset {part.dataset_id} is not dataset {repeated.dataset_id} with rows "
                            "appended: "
                            f"rows {start}-{stop - 1} differ (upload the new rows as a dataset of their own)")


# ------------------------------------------------------------------------------------------ statistics

def statistics_fit(ctx: WorkerContext, block: Any) -> bool:
    from glai_core.solvers import feature_dim
    from glai_core.statistics import statistics_bytes

    return statistics_bytes(feature_dim(block), block.out_features) <= ctx.settings.max_statistics_bytes


def save_statistics(ctx: WorkerContext, job_id: str, sums: Any, hooks: DatabaseHooks, seconds: float) -> None:
    from glai_core import statistics

    with tempfile.TemporaryDirectory(prefix=f"glai-stats-{job_id}-") as tmp:
        path = statistics.save(Path(tmp) / STATISTICS, sums)
        ctx.storage.put_file(statistics_key(job_id), path)
    hooks.reporter.log(f"[{EXPORTING}] sufficient statistics of {sums.rows} rows kept ({sums.dim + 1} x "
                       f"{sums.dim + 1 + len(sums.class_names)} float64, {seconds:.2f} s): children and "
                       "merges "
                       "refit from them without these rows")


def keep_statistics(ctx: WorkerContext, job_id: str, spec: dict[str, Any], block: Any, train: Any,
                    class_names: list[str], parts: list[dict[str, Any]], hooks: DatabaseHooks) -> None:
    """Sums over ``train`` (the job's training rows, standardised as it trained) when they fit and the job
    keeps them; a job whose statistics do not fit says so in its log."""
    from glai_core import statistics

    if not spec.get("keep_statistics", True):
        return
    if train is None or not statistics_fit(ctx, block):
        hooks.reporter.log(f"[{EXPORTING}] no sufficient statistics: the path features do not fit "
                           "GLAI_MAX_STATISTICS_BYTES (children refit on the union of rows instead)")
        return
    started = time.monotonic()
    sums = statistics.compute(block, train, class_names, parts)
    save_statistics(ctx, job_id, sums, hooks, time.monotonic() - started)


def root_part(spec: dict[str, Any], dataset_id: str, config: Any) -> dict[str, Any]:
    from glai_core.parts import Part

    return Part(dataset_id, int(config.seed), float(config.validation_fraction)).to_dict()


def keep_root_statistics(ctx: WorkerContext, job_id: str, spec: dict[str, Any], dataset_id: str, result: Any,
                         data: Any, config: Any, hooks: DatabaseHooks) -> None:
    """A plain job's statistics: its training split read again block by block under its own standardiser
    (no second copy of the split)."""
    from glai_core import statistics
    from glai_core.parts import Part, train_blocks

    if not spec.get("keep_statistics", True):
        return
    if not statistics_fit(ctx, result.glai):
        keep_statistics(ctx, job_id, spec, result.glai, None, [], [], hooks)  # says why not
        return
    part = Part.from_dict(root_part(spec, dataset_id, config))
    classes = [str(c) for c in data.class_names]
    started = time.monotonic()
    blocks = train_blocks(data, part, classes, result.standardizer, result.glai.theta.device)
    sums = statistics.accumulate(result.glai, blocks, classes, [part.to_dict()])
    save_statistics(ctx, job_id, sums, hooks, time.monotonic() - started)


# ------------------------------------------------------------------------------------------ the jobs

def run(ctx: WorkerContext, claimed: Any, config: Any, loaded: Any, hooks: DatabaseHooks,
        device: str) -> dict[str, Any]:
    """Run an incremental, merge or sweep job and export it; returns its summary."""
    kind = kind_of(claimed.spec)
    with tempfile.TemporaryDirectory(prefix=f"glai-lineage-{claimed.job_id}-") as tmp:
        if kind == "incremental":
            exported, stats_job = _incremental(ctx, claimed, config, loaded, hooks, device, Path(tmp))
        elif kind == "merge":
            exported, stats_job = _merge(ctx, claimed, config, hooks, device, Path(tmp))
        else:
            exported, stats_job = _sweep(claimed, config, loaded, hooks)
    from glai_core.hooks import Cancelled

    if hooks.should_stop():
        raise Cancelled("stopped before export")
    hooks.on_phase_start(EXPORTING)
    class_names = exported.summary.get("class_names") or list(loaded.data.class_names)
    settings_file = job_config(claimed.job_id, claimed.dataset.id, claimed.spec, config, exported.summary,
                               class_names, claimed.time_limit_s)
    artifacts = export_result(ctx, claimed.job_id, exported, class_names, loaded.preprocessing,
                              heldout=heldout_rows(loaded.data, config.validation_fraction, config.seed),
                              job_config=settings_file, log=hooks.reporter.log)
    stats_job(ctx, claimed.job_id, hooks)
    hooks.on_phase_end(EXPORTING, {"artifacts": float(len(artifacts))})
    return dict(exported.summary)


def _incremental(ctx: WorkerContext, claimed: Any, config: Any, loaded: Any, hooks: DatabaseHooks,
                 device: str,
                 tmp: Path) -> tuple[Exported, Any]:
    from glai_core import statistics
    from glai_core.incremental import Parent, plan, run_incremental
    from glai_core.parts import Part, concat, union_classes

    lineage = claimed.spec["lineage"]
    backbone = claimed.spec.get("backbone")
    parent = load_parent(ctx, lineage["parent_job_id"], tmp, device)
    own = lineage.get("rows", "union") == "own"
    if own:  # a copy on its own rows: the parent's sums are of other rows
        parent = Parent(parent.block, parent.standardizer, parent.class_names, None)
    classes = union_classes(parent.class_names, loaded.data.class_names)
    parts = [Part.from_dict(p) for p in lineage["parts"]]
    old, new = parts[:-1], parts[-1:]
    if parent.statistics is not None and [p.to_dict() for p in old] != parent.statistics.parts:
        hooks.reporter.log("the parent's statistics cover other rows than its lineage says: not used")
        parent = Parent(parent.block, parent.standardizer, parent.class_names, None)
    load = Loader(ctx, backbone, hooks, device)
    old_train, old_val = _row_counts(load, old)
    new_train, new_val = _row_counts(load, new)
    block = parent.block
    chosen = plan(lineage.get("phase2", "auto"), config.quantitative, parent.statistics,
                  statistics.structure_digest(block.structure), n_new=new_train,
                  n_union=old_train + new_train, n_val=old_val + new_val, d=block.in_features,
                  hidden=block.hidden, m=len(classes), device=device.split(":")[0])
    mode = chosen.mode
    hooks.reporter.log(f"incremental on job {lineage['parent_job_id']}'s structure: {mode} ({chosen.why})")
    if new[0].skip_rows:
        check_appended(load, new[0], old[-1])
    old_placed = _place(load, old, classes, parent.standardizer, mode == "refit")
    new_placed = _place(load, new, classes, parent.standardizer, True)
    result = run_incremental(parent, old_placed, new_placed, classes, config, hooks, mode,
                             claimed.spec.get("keep_statistics", True), chosen_plan=chosen)
    summary = result.summary
    summary["class_names"] = classes
    summary["lineage"] = {"kind": "incremental", "parent_job_id": lineage["parent_job_id"],
                          "structure_job_id": lineage.get("structure_job_id"), "rows": lineage.get("rows",
                                                                                                   "union"),
                          "data": lineage.get("data", "new_rows"), "parts": [p.to_dict() for p in parts],
                          "datasets": [p.dataset_id for p in parts],
                          "rows_added": summary["incremental"]["rows_added"],
                          "train_rows": summary["incremental"]["train_rows"]}
    exported = Exported(result.glai, result.standardizer, summary)

    def stats_job(ctx: WorkerContext, job_id: str, hooks: DatabaseHooks) -> None:
        if result.statistics is not None:
            save_statistics(ctx, job_id, result.statistics, hooks, 0.0)
            return
        train = concat([p.train for p in old_placed + new_placed if p.train is not None])
        keep_statistics(ctx, job_id, claimed.spec, result.glai, train, classes, [p.to_dict() for p in parts],
                        hooks)

    return exported, stats_job


def _merge(ctx: WorkerContext, claimed: Any, config: Any, hooks: DatabaseHooks, device: str,
           tmp: Path) -> tuple[Exported, Any]:
    from glai_core.merge import MergeError, Source, merge, merged_classes
    from glai_core.parts import Part, concat

    spec = claimed.spec["merge"]
    backbone = claimed.spec.get("backbone")
    parents = {s["job_id"]: load_parent(ctx, s["job_id"], tmp, device) for s in spec["sources"]}
    first = parents[spec["sources"][0]["job_id"]]
    for job_id, parent in parents.items():
        if not (np.allclose(parent.standardizer.mean.cpu(), first.standardizer.mean.cpu())
                and np.allclose(parent.standardizer.std.cpu(), first.standardizer.std.cpu())):
            raise UserError(f"job {job_id} standardises its inputs differently: it is no copy of this "
                            "structure")
    have_stats = all(p.statistics is not None for p in parents.values())
    method = spec.get("method", "auto")
    refit = method == "refit" or (method == "auto" and not have_stats)
    classes = list(dict.fromkeys(c for p in parents.values() for c in p.class_names))
    sources = []
    load = Loader(ctx, backbone, hooks, device)
    for entry in spec["sources"]:
        parent = parents[entry["job_id"]]
        parts = [Part.from_dict(p) for p in entry["parts"]]
        placed = _place(load, parts, classes, first.standardizer, refit)
        sources.append(Source(entry["job_id"], parent.block, parent.class_names, parent.statistics, placed))
    try:
        result = merge(sources, first.standardizer, config, hooks, method)
    except MergeError as exc:
        raise UserError(str(exc)) from exc
    summary = result.summary
    summary["class_names"] = merged_classes(sources)
    all_parts = [p.part.to_dict() for s in sources for p in s.parts]
    summary["lineage"] = {"kind": "merge", "sources": [s.job_id for s in sources],
                          "structure_job_id": claimed.spec.get("lineage", {}).get("structure_job_id"),
                          "parts": all_parts, "datasets": [p["dataset_id"] for p in all_parts],
                          "train_rows": summary["merge"]["train_rows"]}
    hooks.reporter.log(f"merged {len(sources)} jobs by {summary['merge']['method']}: "
                       f"{summary['merge']['what']}")

    def stats_job(ctx: WorkerContext, job_id: str, hooks: DatabaseHooks) -> None:
        if result.statistics is not None:
            save_statistics(ctx, job_id, result.statistics, hooks, 0.0)
            return
        train = concat([p.train for s in sources for p in s.parts if p.train is not None])
        keep_statistics(ctx, job_id, claimed.spec, result.glai, train, classes, all_parts, hooks)

    return Exported(result.glai, result.standardizer, summary), stats_job


def _sweep(claimed: Any, config: Any, loaded: Any, hooks: DatabaseHooks) -> tuple[Exported, Any]:
    from glai_core.pipeline import pruning_phase
    from glai_core.sweep import run_sweep

    result = run_sweep(loaded.data, config, claimed.spec["sweep"], hooks)
    pruned = []
    if result.glai is not None and config.pruning.enabled and config.pruning.sparsities:
        batch = int(result.summary["sweep"]["batch_size"])
        pruned = pruning_phase(result.glai, result.train, result.val, config.pruning, batch, hooks,
                               config.seed)
        result.summary["pruned"] = {f"{r.sparsity:g}": float(r.accuracy) for r in pruned}
    exported = Exported(result.glai, result.standardizer, result.summary, result.baseline, pruned)
    classes = [str(c) for c in loaded.data.class_names]

    def stats_job(ctx: WorkerContext, job_id: str, hooks: DatabaseHooks) -> None:
        if result.glai is not None:
            part = root_part(claimed.spec, claimed.dataset.id, config)
            keep_statistics(ctx, job_id, claimed.spec, result.glai, result.train, classes, [part], hooks)

    return exported, stats_job


__all__ = ["KINDS", "STATISTICS", "kind_of", "keep_root_statistics", "load_parent", "run", "statistics_key"]
