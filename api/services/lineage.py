"""Lineage: which rows and which frozen structure a job builds on, checked before anything is stored.

Every job trains on *parts*, one per dataset (``glai_core.parts.Part``: the dataset, the split's seed and
fraction, rows repeated from an earlier part). A plain job has one part, its own dataset; an incremental
child has its parent's parts plus its own (``rows: union``) or its own only (``rows: own``); a merge has
the parts of every job it merges. The *structure job* is the job that trained the frozen S: a plain or a
sweep job is its own, a child inherits its parent's, a merge its sources'.

Bad lineage is refused with a 4xx naming the field, before the job row exists: a parent that is not yours
or does not exist (404, ``parent_job_id``), a parent that did not succeed (409), another feature width or
dropped classes (422, ``dataset_id``), another backbone (422, ``backbone``), settings the frozen structure
fixes (422, ``architecture``/``structural``), rows counted twice (422).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError, not_found
from api.schemas import IncrementalIn, JobCreate, LineageOut
from glai_common.job_kinds import kind_of
from glai_common.models import Artifact, Dataset, Job
from glai_common.settings import Settings
from glai_common.states import SUCCEEDED
from glai_core.parts import Part

FIXED_BY_STRUCTURE = ("architecture", "structural")
NOT_IN_A_CHILD = ("pruning", "baseline")


def validation_fraction(spec: dict[str, Any]) -> float:
    """The fraction the worker splits with: the stored config's, else the spec's (``worker._config``)."""
    config = spec.get("config") or {}
    return float(config.get("validation_fraction", spec.get("validation_fraction", 0.2)))


def seed_of(spec: dict[str, Any]) -> int:
    return int((spec.get("config") or {}).get("seed", 0))


def parts_of(job: Job) -> list[dict[str, Any]]:
    """The parts a job's model was fitted on."""
    spec = job.spec or {}
    if spec.get("lineage"):
        return [dict(p) for p in spec["lineage"]["parts"]]
    return [Part(job.dataset_id, seed_of(spec), validation_fraction(spec)).to_dict()]


def structure_of(job: Job) -> str:
    """The id of the job that trained the frozen structure this job's model runs on."""
    lineage = (job.spec or {}).get("lineage") or {}
    return str(lineage.get("structure_job_id") or job.id)


def classes_of(db: Session, job: Job) -> list[str]:
    """The job's model's classes, in output order."""
    names = (job.summary or {}).get("class_names")
    if names:
        return [str(c) for c in names]
    dataset = db.get(Dataset, job.dataset_id)
    return [str(c) for c in (dataset.class_names if dataset is not None else [])]


def width_of(dataset: Dataset, backbone: str | None) -> int:
    from glai_core.backbones import BACKBONES

    return int(BACKBONES.get(backbone or "", dataset.n_features))


def rows_of(db: Session, parts: list[dict[str, Any]]) -> int:
    total = 0
    for part in parts:
        dataset = db.get(Dataset, part["dataset_id"])
        if dataset is not None:
            total += dataset.n_samples + dataset.n_validation - int(part.get("skip_rows", 0))
    return total


def owned_succeeded(db: Session, owner: str, job_id: str, field: str) -> Job:
    """The caller's succeeded job with a trained GLAI model, or the 4xx that says why not."""
    from api.services.jobs import looks_like_id

    job = db.get(Job, job_id) if looks_like_id(job_id) else None
    if job is None or job.owner != owner:
        raise not_found("job", job_id, field)
    if job.state != SUCCEEDED:
        raise ApiError(409, f"job '{job_id}' is {job.state}: only a succeeded job's structure can be reused "
                            "(wait for it, or resume it)", field)
    trained = db.scalar(select(Artifact.id).where(Artifact.job_id == job.id, Artifact.name == "trained"))
    if trained is None:
        raise ApiError(409, f"job '{job_id}' has no trained GLAI model to continue", field)
    return job


def incremental_spec(db: Session, owner: str, body: JobCreate, dataset: Dataset, spec: dict[str, Any],
                     settings: Settings) -> tuple[dict[str, Any], Job]:
    """``spec`` with its ``lineage`` for a child of ``body.parent_job_id``; every check is a 4xx."""
    del settings
    assert body.parent_job_id is not None
    given = body.model_fields_set
    for name in FIXED_BY_STRUCTURE:
        if name in given:
            raise ApiError(422, f"{name}: an incremental job reuses its parent's frozen structure, so its "
                                f"{name} settings are the parent's; leave '{name}' out", name)
    for name in NOT_IN_A_CHILD:
        if name in given and getattr(body, name).enabled:
            raise ApiError(422, f"{name}.enabled: an incremental job refits the path weights only; run "
                                f"{name} in a job of its own", f"{name}.enabled")
    if body.sweep is not None:
        raise ApiError(422, "sweep: a sweep trains new structures; it cannot continue a parent's", "sweep")
    parent = owned_succeeded(db, owner, body.parent_job_id, "parent_job_id")
    parent_spec = parent.spec or {}
    if (parent_spec.get("backbone") or None) != (body.backbone or None):
        raise ApiError(422,
                       f"backbone: the parent embeds with {parent_spec.get('backbone') or 'no backbone'}; "
                            "a child must use the same", "backbone")
    parent_dataset = db.get(Dataset, parent.dataset_id)
    assert parent_dataset is not None  # the foreign key guarantees it
    want, got = width_of(parent_dataset, body.backbone), width_of(dataset, body.backbone)
    if want != got:
        raise ApiError(422, f"dataset_id: dataset '{dataset.id}' has {got} features per row, the parent's "
                            f"structure takes {want}", "dataset_id")
    parent_classes = classes_of(db, parent)
    names = [str(c) for c in dataset.class_names]
    dropped = [c for c in parent_classes if c not in names]
    if dropped:
        shown = ", ".join(repr(c) for c in dropped[:10])
        raise ApiError(422, f"dataset_id: dataset '{dataset.id}' lacks the parent's classes {shown}: a child "
                            "keeps every class of its parent (new ones are added)", "dataset_id")
    incremental = body.incremental or IncrementalIn()
    before = parts_of(parent)
    skip = 0
    if incremental.data == "appended":
        skip = _appended_rows(db, dataset, before[-1])
    elif incremental.rows == "union" and dataset.id in {p["dataset_id"] for p in before}:
        raise ApiError(422,
                       f"dataset_id: dataset '{dataset.id}' is already part of the parent's rows; give the "
                            "new rows as a dataset of their own (or incremental.data 'appended')",
                       "dataset_id")
    part = Part(dataset.id, body.seed, validation_fraction(spec), skip).to_dict()
    parts = (before if incremental.rows == "union" else []) + [part]
    lineage = {"parent_job_id": parent.id, "structure_job_id": structure_of(parent), "rows": incremental.rows,
               "data": incremental.data, "phase2": incremental.phase2, "parts": parts,
               "parent_class_names": parent_classes}
    spec = {**spec, "lineage": lineage}
    spec["config"] = {**spec["config"], "architecture": dict(parent_spec["config"]["architecture"]),
                      "pruning": {**spec["config"]["pruning"], "enabled": False},
                      "baseline": {**spec["config"]["baseline"], "enabled": False}}
    return spec, parent


def _appended_rows(db: Session, dataset: Dataset, last: dict[str, Any]) -> int:
    """Rows an appended dataset repeats: all of the parent's latest part's dataset (checked row by row by
    the worker before training)."""
    previous = db.get(Dataset, last["dataset_id"])
    if previous is None:
        raise ApiError(409, f"dataset '{last['dataset_id']}' of the parent's rows no longer exists",
                       "dataset_id")
    if dataset.id == previous.id:
        raise ApiError(422,
                       "dataset_id: an appended dataset is a new upload: the parent's rows plus new ones",
                       "dataset_id")
    if dataset.n_validation or previous.n_validation:
        raise ApiError(422,
                       "incremental.data: an appended dataset cannot ship its own validation split; upload "
                            "the new rows as a dataset of their own", "incremental.data")
    if dataset.n_samples <= previous.n_samples:
        raise ApiError(422,
                       f"incremental.data: dataset '{dataset.id}' has {dataset.n_samples} rows, no more than "
                            f"the {previous.n_samples} of dataset '{previous.id}' it would extend",
                       "incremental.data")
    return int(previous.n_samples)


def request_fields(body: JobCreate) -> dict[str, Any]:
    """The spec keys of this module's request fields, only when given (older idempotency keys replay)."""
    fields: dict[str, Any] = {}
    if body.parent_job_id is not None:
        fields["parent"] = {"job_id": body.parent_job_id,
                            "incremental": (body.incremental or IncrementalIn()).model_dump()}
    if body.sweep is not None:
        fields["sweep"] = sweep_spec(body)
    if not body.keep_statistics:
        fields["keep_statistics"] = False
    return fields


def prepare(db: Session, owner: str, body: JobCreate, dataset: Dataset, spec: dict[str, Any],
            time_limit_s: int,
            settings: Settings) -> tuple[dict[str, Any], Job | None]:
    """The spec to store and the parent (or None): a child gets its lineage, a sweep its head count and
    widths checked against the deployment's limits. A plain job passes through."""
    from api.services import limits

    if body.incremental is not None and body.parent_job_id is None:
        raise ApiError(422, "incremental: only with parent_job_id (the job to continue)", "incremental")
    parent = None
    if body.parent_job_id is not None:
        spec.pop("parent", None)
        spec, parent = incremental_spec(db, owner, body, dataset, spec, settings)
        limits.check_limits(spec, time_limit_s, width_of(dataset, body.backbone), len(dataset.class_names),
                            rows_of(db, spec["lineage"]["parts"]), settings)
    if body.sweep is not None:
        check_sweep(body, settings)
        for factor in body.sweep.reduction_factor or []:
            variant = {**spec, "config": {**spec["config"], "architecture": {
                **spec["config"]["architecture"], "reduction_factor": None if factor == "auto" else factor}}}
            try:
                limits.check_limits(variant, time_limit_s, width_of(dataset, body.backbone),
                                    dataset.n_classes,
                                    dataset.n_samples + dataset.n_validation, settings)
            except ApiError as exc:
                raise ApiError(exc.status_code, f"sweep.reduction_factor {factor!r}: {exc.detail}",
                               "sweep.reduction_factor") from exc
    return spec, parent


def lineage_out(job: Job) -> LineageOut:
    """The ``lineage`` of a job body, from its spec (what was asked) and summary (what was counted)."""
    spec = job.spec or {}
    lineage = spec.get("lineage") or {}
    counted = (job.summary or {}).get("lineage") or {}
    return LineageOut(kind=kind_of(spec), parent_job_id=job.parent_job_id or lineage.get("parent_job_id"),
                      structure_job_id=structure_of(job),
                      sources=list((spec.get("merge") or {}).get("job_ids", [])),
                      rows=lineage.get("rows"), data=lineage.get("data"),
                      datasets=[p["dataset_id"] for p in parts_of(job)], rows_added=counted.get("rows_added"),
                      train_rows=counted.get("train_rows"))


def check_sweep(body: JobCreate, settings: Settings) -> int:
    """Heads of the grid (GLAI and MLP); above GLAI_MAX_SWEEP_HEADS is a 422."""
    if body.sweep is None:
        return 0
    lrs = len(body.sweep.lr or [None])
    factors = len(body.sweep.reduction_factor or [None])
    seeds = len(body.sweep.seed or [None])
    heads = lrs * factors * seeds + (lrs * seeds if body.baseline.enabled else 0)
    if heads > settings.max_sweep_heads:
        raise ApiError(422,
                       f"sweep: {heads} heads ({lrs} lr x {factors} reduction_factor x {seeds} seed GLAI "
                            f"heads{', plus an MLP per lr and seed' if body.baseline.enabled else ''}) "
                            "exceed "
                            f"GLAI_MAX_SWEEP_HEADS={settings.max_sweep_heads}", "sweep")
    return heads


def sweep_spec(body: JobCreate) -> dict[str, Any] | None:
    """The grid as the worker reads it (``glai_core.sweep``): lists per key, "auto" kept as a word."""
    if body.sweep is None:
        return None
    grid = body.sweep.model_dump(exclude={"halving"})
    spec: dict[str, Any] = {key: list(values) for key, values in grid.items() if values is not None}
    if body.sweep.halving is not None:
        spec["halving"] = body.sweep.halving.model_dump()
    return spec


__all__ = ["check_sweep", "classes_of", "incremental_spec", "kind_of", "lineage_out", "owned_succeeded",
           "parts_of", "prepare",
           "request_fields", "rows_of", "structure_of", "sweep_spec", "validation_fraction"]
