"""Request and response bodies of the v1 API. Every field is documented: this is what /docs shows.

Training settings mirror ``glai_core.config`` and take their defaults from it, so the library stays the
single source of truth for what a default is. Limits that depend on the deployment (widths, epochs,
parameters, time) are checked by the job service against ``Settings`` and reported as 422s.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from glai_common.settings import QUEUE_NAME
from glai_common.webhook_urls import MAX_URL_LENGTH
from glai_common.webhook_urls import parse as parse_webhook_url
from glai_core.config import (
    ArchitectureConfig,
    BaselineConfig,
    PruningConfig,
    QuantitativeConfig,
    StructuralConfig,
)
from glai_core.data import BUILTIN_NAMES

_ARCH, _STRUCT, _QUANT = ArchitectureConfig(), StructuralConfig(), QuantitativeConfig()
_PRUNE, _BASE = PruningConfig(), BaselineConfig()
MIN_REDUCTION, MAX_REDUCTION = 0.01, 1e4  # r < 1 widens GLAI; the width and memory limits still apply


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @field_validator("*", mode="after")
    @classmethod
    def _aware(cls, value: Any) -> Any:
        return _utc(value) if isinstance(value, datetime) else value


class In(BaseModel):
    """Request bodies: unknown fields, NaN/Infinity (Python's JSON reader accepts them) and NUL characters
    (PostgreSQL refuses them in text) are all refused with a 422 naming the field. Types are strict, as
    the schema states them: `"0"` is no integer, `"yes"` no boolean, `true` no width (a number where a
    float is due is fine)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("NUL characters are not allowed")
        return value


# ---------------------------------------------------------------- errors and health

class ErrorBody(BaseModel):
    """The body of every error response (some add keys, e.g. `errors` on 422s, `job_id` on a 503)."""

    detail: str = Field(description="What went wrong, as one sentence a person can act on.",
                        examples=["architecture.hidden: at most 4 hidden layers are allowed (got 6)"])
    field: str | None = Field(None, description="The request field to blame (dotted path), if any.",
                              examples=["architecture.hidden"])


class FieldError(BaseModel):
    field: str | None = Field(description="Dotted path of the invalid field (null: the whole request).")
    message: str = Field(description="Why it is invalid.")


class ValidationErrorBody(ErrorBody):
    """A 422: `detail`/`field` describe the first problem; `errors` lists every problem found by the
    request validation (absent when a limit or a dataset check refused the request)."""

    errors: list[FieldError] | None = Field(None, description="Every invalid field, when several were.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"] = Field(description="`ok` when every check passed.")
    checks: dict[str, str] = Field(default_factory=dict,
                                   description="Per dependency: `ok` or the error seen.",
                                   examples=[{"database": "ok", "broker": "ok"}])


# ---------------------------------------------------------------- datasets

class BuiltinDatasetCreate(In):
    """Materialise one of the bundled datasets (no download happens)."""

    name: Annotated[str, WithJsonSchema({"type": "string", "enum": list(BUILTIN_NAMES)})] = Field(
        description="Built-in dataset name: " + ", ".join(f"`{n}`" for n in BUILTIN_NAMES) + ".",
        examples=["digits"])
    seed: int = Field(0, ge=0, le=2**31 - 1,
                      description="Seed for datasets that are generated or split randomly.")
    display_name: str | None = Field(None, max_length=256,
                                     description="Name to show; defaults to the built-in name.")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in BUILTIN_NAMES:
            raise ValueError(f"unknown built-in dataset {name[:64]!r}; one of: {', '.join(BUILTIN_NAMES)}")
        return name


class DatasetOut(Out):
    """A stored, validated dataset. Its arrays live under the storage key; rows never hold data."""

    id: str = Field(description="Dataset id (32 hex characters).",
                    examples=["4f1c0e2a9b7d4e3f8a6b5c4d3e2f1a0b"])
    name: str = Field(description="Display name given at upload (or the built-in name).")
    kind: str = Field(description="`features` (numeric table); `text`/`images` come with a backbone.")
    source: str = Field(description="`upload` or `builtin`.")
    file_format: str = Field(description="Format of the original file: npz, csv, parquet or builtin.")
    label_column: str | None = Field(description="Column used as the label for csv/parquet uploads.")
    text_column: str | None = Field(None, description="kind `text`: the column holding the texts.")
    sha256: str = Field(description="SHA-256 of the uploaded file (of the stored arrays for built-ins).")
    size_bytes: int = Field(description="Size of the uploaded file in bytes.")
    stored_bytes: int | None = Field(None, description="Bytes it takes in storage (canonical arrays or the "
                                     "raw upload), counted against GLAI_MAX_OWNER_STORAGE_BYTES; null for "
                                     "datasets stored before this was recorded (their upload size counts).")
    n_samples: int = Field(description="Training samples.")
    n_features: int = Field(description="Input features per sample (d).")
    n_classes: int = Field(description="Number of classes (m).")
    n_validation: int = Field(description="Samples in a validation split shipped with the data (0: none).")
    class_names: list[Any] = Field(description="Class labels in the order of the model's outputs.")
    created_at: datetime = Field(description="When the dataset was stored (UTC).")


class DatasetCreated(DatasetOut):
    """A dataset just stored, and whether you already had these bytes."""

    duplicate_of: list[str] = Field(
        default_factory=list, description="Ids of your other datasets with the same `sha256` (newest first, "
        "at most 10): the same file was stored before, and a job can use one of those. The new dataset is "
        "stored all the same; delete it if you meant the old one. Empty when there is none.",
        examples=[["4f1c0e2a9b7d4e3f8a6b5c4d3e2f1a0b"]])


class DatasetList(BaseModel):
    items: list[DatasetOut] = Field(description="Datasets, newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


# ---------------------------------------------------------------- jobs: request

class ArchitectureIn(In):
    """The reference MLP you would have trained; GLAI's widths are derived from it."""

    hidden: list[int] = Field(default_factory=lambda: list(_ARCH.hidden), min_length=1,
                              description="Hidden widths of the reference MLP, input side first.",
                              examples=[[256], [512, 256]],
                              json_schema_extra={"items": {"type": "integer", "minimum": 1}})
    reduction_factor: Annotated[Literal["auto", "adaptive"] | float, WithJsonSchema({"anyOf": [
        {"type": "string", "enum": ["auto", "adaptive"]},
        {"type": "number", "minimum": MIN_REDUCTION, "maximum": MAX_REDUCTION}]})] = Field(
        "auto", description=f"GLAI width = reference width / r, {MIN_REDUCTION} <= r <= {MAX_REDUCTION:g}. "
        "`auto` picks r so that GLAI's trainable parameters match the reference MLP's; `adaptive` sizes the "
        "structure by the data instead (about one path weight per training target, never wider than the "
        "reference): the job then reports both parameter counts and `parameter_matched: false`.",
        examples=["auto", 4.0])

    @field_validator("hidden")
    @classmethod
    def _positive(cls, widths: list[int]) -> list[int]:
        if any(w < 1 for w in widths):
            raise ValueError("every hidden width must be at least 1")
        return widths

    @field_validator("reduction_factor", mode="before")
    @classmethod
    def _factor(cls, r: Any) -> Any:
        """Checked before the union, so a bad value gets one clear message naming the field."""
        problem = (f"reduction_factor must be 'auto', 'adaptive' or a finite number from {MIN_REDUCTION} to "
                   f"{MAX_REDUCTION:g} (got {r!r:.40})")
        if r in ("auto", "adaptive"):
            return r
        if isinstance(r, bool) or not isinstance(r, int | float):  # strict: no numbers in strings
            raise ValueError(problem)
        try:
            value = float(r)
        except ValueError:
            raise ValueError(problem) from None
        if not math.isfinite(value) or not MIN_REDUCTION <= value <= MAX_REDUCTION:
            raise ValueError(problem)
        return value


AUTO_NOTE = ("`auto` (default): chosen from the data (N, d, m); the job's `summary.effective_settings` "
             "says what and why.")


def _int_or_auto(low: int, high: int | None = 1_000_000) -> Any:
    """An integer in [low, high] or "auto"; epoch budgets have no bound here: the deployment's
    GLAI_MAX_EPOCHS refuses them with its own message (``api.services.limits``)."""
    return Annotated[int, Field(ge=low, le=high)] | Literal["auto"]


def _rate_or_auto() -> Any:
    return Annotated[float, Field(gt=0, le=10)] | Literal["auto"]


class StructuralIn(In):
    """Phase 1: train the structural MLP until its gating pattern stops changing."""

    max_epochs: _int_or_auto(1, None) = Field("auto",
                                              description=f"Upper bound on structural epochs. {AUTO_NOTE}")
    min_epochs: _int_or_auto(0) = Field(
        "auto", description="Epochs always run before the structure may freeze (at most max_epochs). "
                            f"{AUTO_NOTE}")
    threshold: float = Field(_STRUCT.threshold, gt=0, le=100,
                             description="Path distance between two checks, per 100 optimiser steps, below "
                                         "which the structure counts as stable.")
    window: int = Field(_STRUCT.window, ge=1, le=10_000,
                        description="Consecutive stable checks needed to freeze.")
    check_interval: _int_or_auto(1) = Field(
        "auto", description=f"Epochs between two structure checks (path distances). {AUTO_NOTE}")
    patience: _int_or_auto(1, 10_000) = Field(
        "auto", description="Epochs without validation improvement after which S freezes at its best "
                            f"(noisy data may keep its gates moving while it overfits). {AUTO_NOTE}")
    lr: _rate_or_auto() = Field("auto", description=f"Adam learning rate. {AUTO_NOTE}")
    batch_size: _int_or_auto(1) = Field("auto", description=f"Mini-batch size. {AUTO_NOTE}")
    weight_decay: float = Field(_STRUCT.weight_decay, ge=0, le=10, description="Adam weight decay.")
    probe_size: int = Field(_STRUCT.probe_size, ge=1, le=1_000_000,
                            description="Samples used to measure path distance.")

    @model_validator(mode="after")
    def _order(self) -> StructuralIn:
        # Only an explicit conflict is an error: the default floor simply yields to a small max_epochs.
        low, high = self.min_epochs, self.max_epochs
        if isinstance(low, int) and isinstance(high, int) and low > high:
            raise ValueError("min_epochs must not exceed max_epochs")
        return self


class QuantitativeIn(In):
    """Phase 2: fit the path weights with the structure frozen."""

    solver: Literal["auto", "adam", "ridge", "ridge+adam", "lbfgs", "ridge+lbfgs"] = Field(
        _QUANT.solver,
        description="`auto`: a cost model picks the faster first-order method (full-batch L-BFGS or "
                    "mini-batch Adam) and runs the exact closed form first when it is cheap; `ridge`: closed "
                    "form only; `adam`: mini-batch Adam from the warm start; `lbfgs`: full-batch L-BFGS on "
                    "cross-entropy from the warm start; `ridge+adam`, `ridge+lbfgs`: the closed form first.")
    warm_start: bool = Field(_QUANT.warm_start, description="Start from the structural MLP's function.")
    epochs: _int_or_auto(0, None) = Field("auto", description=f"Adam epochs (0: none). {AUTO_NOTE}")
    lr: float = Field(_QUANT.lr, gt=0, le=10, description="Adam learning rate.")
    batch_size: _int_or_auto(1) = Field("auto", description=f"Adam mini-batch size. {AUTO_NOTE}")
    ridge_lambda: float = Field(_QUANT.ridge_lambda, ge=0, le=1e6,
                                description="Ridge regularisation strength (relative to mean diag(F^T F)).")
    patience: _int_or_auto(1, 10_000) = Field(
        "auto", description=f"Adam epochs without improvement before stopping. {AUTO_NOTE}")
    backtrack: bool = Field(_QUANT.backtrack,
                            description="After an epoch without improvement, go back to the best point and "
                                        "halve the learning rate (the phase is convex: it overshot).")
    lbfgs_iterations: int = Field(_QUANT.lbfgs_iterations, ge=1, le=100_000,
                                  description="Most full-batch L-BFGS iterations.")


# What PruningIn._fractions checks, said in the schema (a plain float would document 0 and 1 as valid).
_FRACTION = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}


class PruningIn(In):
    """Path-norm pruning after training, one exported model per sparsity."""

    enabled: bool = Field(_PRUNE.enabled, description="Run the pruning sweep.")
    sparsities: list[Annotated[float, WithJsonSchema(_FRACTION)]] = Field(
        default_factory=lambda: list(_PRUNE.sparsities), max_length=20,
                                    description="Fractions to remove, each in (0, 1).", examples=[[0.5, 0.9]])
    structured: bool = Field(_PRUNE.structured, description="Remove whole units (true) or single paths.")
    finetune_epochs: int = Field(_PRUNE.finetune_epochs, ge=0, description="Fine-tuning epochs per level.")
    lr: float = Field(_PRUNE.lr, gt=0, le=10, description="Fine-tuning learning rate.")

    @field_validator("sparsities")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 < v < 1 for v in values):
            raise ValueError("every sparsity must lie strictly between 0 and 1")
        return sorted(set(values))


class BaselineIn(In):
    """A parameter-matched MLP trained the usual way, for comparison."""

    enabled: bool = Field(_BASE.enabled, description="Train the MLP baseline.")
    max_epochs: _int_or_auto(1, None) = Field("auto",
                                              description=f"Upper bound on baseline epochs. {AUTO_NOTE}")
    patience: _int_or_auto(1, 10_000) = Field(
        "auto", description=f"Epochs without improvement before stopping. {AUTO_NOTE}")
    lr: _rate_or_auto() = Field("auto", description=f"Adam learning rate. {AUTO_NOTE}")
    batch_size: _int_or_auto(1) = Field("auto", description=f"Mini-batch size. {AUTO_NOTE}")


_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # names and tags: any text but control characters


class NotifyIn(In):
    """Tell a URL of yours when the job ends."""

    webhook_url: str = Field(
        min_length=1, max_length=MAX_URL_LENGTH,
        description="Called with a signed POST when the job succeeds, fails or is cancelled (header "
        "`GLAI-Signature`, key from `GET /v1/webhooks/secret`). http or https only, no credentials in the "
        "URL; a host that is or resolves to a loopback, private or otherwise non-public address is refused "
        "unless the operator allows it (GLAI_WEBHOOK_ALLOW_PRIVATE).",
        examples=["https://hooks.example.com/glai"])

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parse_webhook_url(url)  # its WebhookUrlError is a ValueError: a 422 naming notify.webhook_url
        return url


# ---------------------------------------------------------------- lineage, merging and sweeps (issue 17)

class IncrementalIn(In):
    """How a child of `parent_job_id` uses its dataset: the parent's structure S stays frozen (no phase 1)
    and only the path weights are refitted, warm-started from the parent's."""

    rows: Literal["union", "own"] = Field(
        "union", description="`union`: fit the parent's rows and this dataset's together (the parent's "
        "lineage plus this part); `own`: this dataset's rows only, on the parent's structure (a copy to "
        "merge with others later, `POST /v1/models/merge`).")
    data: Literal["new_rows", "appended"] = Field(
        "new_rows", description="`new_rows`: the dataset holds only rows the parent has not seen; "
        "`appended`: it is the parent's latest dataset with rows appended (its first rows must be that "
        "dataset's, byte for byte; only the rows after them are new).")
    phase2: Literal["auto", "statistics", "refit"] = Field(
        "auto", description="`statistics`: the closed form from the parent's sufficient statistics plus the "
        "new rows' (only the new rows are read; needs the parent's statistics); `refit`: phase 2 with "
        "`quantitative.solver` on the union of every part's rows; `auto`: `statistics` where the job's "
        "phase 2 is the closed form (`quantitative.solver: ridge`), the parent kept them and they are the "
        "cheaper way to it; otherwise `refit` from the parent's weights (L-BFGS, or Adam where L-BFGS is "
        "estimated at over twice its time: a cross-entropy fit needs every row), unless the squared-loss "
        "statistics are estimated at least 4x cheaper.")


_SWEEP_LR = Annotated[float, Field(gt=0, le=10)]
_SWEEP_R = Annotated[Literal["auto", "adaptive"] | float, WithJsonSchema({"anyOf": [
    {"type": "string", "enum": ["auto", "adaptive"]},
    {"type": "number", "minimum": MIN_REDUCTION, "maximum": MAX_REDUCTION}]})]
_SWEEP_SEED = Annotated[int, Field(ge=0, le=2**31 - 1)]


class HalvingIn(In):
    """Successive halving (ASHA's rule, synchronous): at each rung, an epoch of the shared pass at
    `first_rung` x `eta`^i, each kind's heads still in the race are ranked by validation accuracy and only
    the top 1/`eta` train on. A cut head stops at its best weights and is reported with `pruned_at`; the
    job's models come from the heads that finished. A slow starter (a small learning rate) can be cut
    before it catches up: that is the price of the saved time."""

    eta: int = Field(2, ge=2, le=8, description="Keep the best 1/eta of the heads at each rung.")
    first_rung: int | None = Field(None, ge=1, le=10_000, description="Epochs before the first cut; "
                                   "omitted: half each kind's adapted patience, rounded up "
                                   "(`structural.patience` for GLAI, `baseline.patience` for the MLP).")


class SweepIn(In):
    """A grid of heads trained in one job, side by side in one batched pass over the data. GLAI heads take
    every (lr, reduction_factor, seed); MLP heads (with the baseline enabled) every (lr, seed). A key left
    out keeps the job's own value. At most GLAI_MAX_SWEEP_HEADS heads."""

    lr: list[_SWEEP_LR] | None = Field(None, min_length=1, max_length=32,
                                       description="Adam learning rates of the structural phase (GLAI) and "
                                       "of the MLP.", examples=[[3e-4, 1e-3, 3e-3]])
    reduction_factor: list[_SWEEP_R] | None = Field(
        None, min_length=1, max_length=32, description="GLAI widths: `auto` (parameter-matched), `adaptive` "
        f"or r in [{MIN_REDUCTION}, {MAX_REDUCTION:g}], as `architecture.reduction_factor`.",
        examples=[["auto", 2.0]])
    seed: list[_SWEEP_SEED] | None = Field(None, min_length=1, max_length=32,
                                           description="Initialisation seeds (the split and the batch order "
                                           "stay the job's `seed`: every head sees the same batches).",
                                           examples=[[0, 1, 2]])
    halving: HalvingIn | None = Field(None, description="Cut the weaker heads at rungs of the pass "
                                      "(successive halving); omitted: every head trains to its own stop.",
                                      examples=[{"eta": 2}])

    @field_validator("reduction_factor", mode="before")
    @classmethod
    def _factors(cls, values: Any) -> Any:
        if isinstance(values, list):
            return [ArchitectureIn._factor(v) for v in values]  # one message for every bad value
        return values

    @field_validator("lr", "reduction_factor", "seed")
    @classmethod
    def _distinct(cls, values: list[Any] | None) -> list[Any] | None:
        if values is not None and len(set(map(str, values))) != len(values):
            raise ValueError("values must be distinct")
        return values

    @model_validator(mode="after")
    def _something(self) -> SweepIn:
        if self.lr is None and self.reduction_factor is None and self.seed is None:
            raise ValueError("give at least one of lr, reduction_factor and seed")
        return self


class MergeCreate(In):
    """Jobs that share one frozen structure, merged into the model of all their data."""

    job_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=2, max_length=32, description="Succeeded jobs of yours on one structure (a job and its "
        "children with `incremental.rows: own`, or such children), fitted on different rows.",
        examples=[["4f1c0e2a9b7d4e3f8a6b5c4d3e2f1a0b", "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"]])
    method: Literal["auto", "summed_statistics", "refit"] = Field(
        "auto", description="`summed_statistics`: the closed form on the jobs' summed sufficient statistics "
        "(exactly the ridge fit of the union of their rows; no training row is read); `refit`: phase 2 on "
        "the union of their rows from the row-weighted mean of their path weights; `auto`: the first when "
        "every job kept statistics.")
    name: str | None = Field(None, min_length=1, max_length=256, pattern=_PRINTABLE,
                             description="Your label for the merge job.")
    time_limit_s: int | None = Field(None, ge=1, le=10**9, description="Wall-clock limit in seconds, as for "
                                     "`POST /v1/jobs`.")

    @field_validator("job_ids")
    @classmethod
    def _distinct(cls, ids: list[str]) -> list[str]:
        if len(set(ids)) != len(ids):
            raise ValueError("a job can be merged only once: the ids must be distinct")
        return ids


class LineageOut(BaseModel):
    """Where a job's structure and rows come from."""

    kind: Literal["train", "incremental", "merge", "sweep"] = Field(
        description="`train` (a job of its own), `incremental` (a child of `parent_job_id`), `merge` or "
                    "`sweep`.")
    parent_job_id: str | None = Field(None, description="The job whose structure and weights it continues.")
    structure_job_id: str | None = Field(None, description="The job that trained the frozen structure S.")
    sources: list[str] = Field(default_factory=list, description="Merge: the jobs merged.")
    rows: str | None = Field(None, description="Incremental: `union` or `own`.")
    data: str | None = Field(None, description="Incremental: `new_rows` or `appended`.")
    datasets: list[str] = Field(default_factory=list, description="Every dataset whose rows the model was "
                                "fitted on, oldest first.")
    rows_added: int | None = Field(None, description="Incremental: rows of this job's dataset that are new "
                                   "(training and validation), once known.")
    train_rows: int | None = Field(None, description="Training rows behind the model, once known.")


class JobCreate(In):
    """A training request. Everything but `dataset_id` is optional; defaults come from glai_core."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [
        {"dataset_id": "4f1c0e2a9b7d4e3f8a6b5c4d3e2f1a0b", "architecture": {"hidden": [256]},
         "structural": {"max_epochs": 20}, "pruning": {"sparsities": [0.5, 0.9]}, "seed": 1}]})

    dataset_id: str = Field(min_length=1, max_length=64, description="Id of one of your datasets.")
    name: str | None = Field(None, min_length=1, max_length=256, pattern=_PRINTABLE,
                             description="Your label for the job (not unique); `GET /v1/jobs?name=` "
                                         "finds it.",
                             examples=["iris-256"])
    tags: list[Annotated[str, Field(min_length=1, max_length=64, pattern=_PRINTABLE)]] = Field(
        default_factory=list, max_length=32, description="Free-form labels, kept in order (repeats dropped).",
        examples=[["baseline", "sweep-3"]])
    architecture: ArchitectureIn = Field(default_factory=ArchitectureIn)
    structural: StructuralIn = Field(default_factory=StructuralIn)
    quantitative: QuantitativeIn = Field(default_factory=QuantitativeIn)
    pruning: PruningIn = Field(default_factory=PruningIn)
    baseline: BaselineIn = Field(default_factory=BaselineIn)
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for initialisation, shuffling and splits.")
    backbone: Literal["minilm", "efficientnet-lite0"] | None = Field(
        None, description="Frozen backbone that embeds a raw dataset first: `minilm` for kind `text`, "
        "`efficientnet-lite0` for kind `images`; null for `features`.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Arithmetic of the training steps; weights, Adam, evaluation and closed-form "
        "solves stay fp32/fp64. `auto`: TF32 matmuls on a GPU, bf16 products on CPUs with bf16 hardware "
        "(AVX-512 BF16, AMX), else fp32. `fp32` for results that do not depend on the hardware's "
        "precision. The job's summary reports what ran as `training_precision`.")
    validation_fraction: float = Field(0.2, gt=0, lt=1,
                                       description="Share held out for validation when the dataset has no "
                                       "validation split of its own.")
    time_limit_s: int | None = Field(None, ge=1, le=10**9, description="Wall-clock limit in seconds; the job "
                                     "fails with kind `timeout` past it. Default: "
                                     "GLAI_DEFAULT_JOB_TIME_LIMIT_S; at most GLAI_MAX_JOB_TIME_LIMIT_S.")

    priority: Literal["low", "normal", "high"] = Field(
        "normal", description="Within its queue, a waiting `high` job is started before any `normal` one, "
                              "and `normal` before `low`. A running job is never interrupted for another.")
    queue: str | None = Field(
        None, min_length=1, max_length=63, pattern=QUEUE_NAME.pattern,
        description="The worker pool to run on, one of the deployment's GLAI_QUEUES (e.g. `gpu-a100`, "
                    "`cpu`); only workers started for it (`glai worker --queues`) take the job. Default: "
                    "the first of GLAI_QUEUES.", examples=["cpu"])
    notify: NotifyIn | None = Field(None, description="Webhook for the job's final state; none by default.")
    parent_job_id: str | None = Field(
        None, min_length=1, max_length=64, description="A succeeded job of yours to continue: its frozen "
        "structure is reused (no structural phase) and its path weights are refitted with this dataset's "
        "rows (`incremental` says how). The dataset needs the parent's feature width and every class of the "
        "parent (new classes get new outputs). The lineage is recorded in `lineage`.")
    incremental: IncrementalIn | None = Field(None, description="With `parent_job_id`: how the rows are used "
                                              "and how Θ is refitted. Default: union, new rows, auto.")
    sweep: SweepIn | None = Field(None, description="Train a grid of heads in one batched pass; the best "
                                  "GLAI head and the best MLP are kept as the job's models, every head is in "
                                  "`summary.sweep`.")
    keep_statistics: bool = Field(True, description="Keep the closed form's sufficient statistics (when they "
                                  "fit GLAI_MAX_STATISTICS_BYTES) so that children and merges refit without "
                                  "reading these rows again. Costs one pass over the training rows at "
                                  "export.")

    @field_validator("tags")
    @classmethod
    def _distinct(cls, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(tags))


class JobResume(In):
    """Resume a failed (e.g. timed-out) job from its checkpoints. The body may be empty."""

    time_limit_s: int | None = Field(None, ge=1, le=10**9, description="Running time the job gets from now "
                                     "on, in seconds (earlier attempts no longer count). Default: its own "
                                     "`time_limit_s` again; at most GLAI_MAX_JOB_TIME_LIMIT_S.")


# ---------------------------------------------------------------- jobs: response

class TransitionOut(Out):
    """One recorded change of the job's state or phase."""

    field: str = Field(description="`state` or `phase`.")
    from_value: str | None = Field(description="Value before (null at creation).")
    to_value: str = Field(description="Value after.")
    reason: str = Field(description="Why, in words (may be empty).")
    at: datetime = Field(description="When (UTC).")


class ArtifactOut(Out):
    """An exported file: a model (safetensors; metadata in its header under `glai`), its ONNX copy, or the
    job's `config.json` (every setting it ran with)."""

    name: str = Field(description="Models: `trained`, `pruned-<pct>`, `baseline`; their ONNX copies: "
                      "`<model>.onnx` (input `features`, outputs `logits` and `probabilities`; `meta.check` "
                      "compares them with PyTorch on held-out rows); the settings: `config.json`.",
                      examples=["trained", "trained.onnx", "config.json"])
    format: Literal["safetensors", "onnx", "json"] = Field(
        description="File format: `safetensors` (a model), `onnx` (its ONNX copy) or `json` (config.json).")
    size_bytes: int = Field(description="File size in bytes.")
    sha256: str = Field(description="SHA-256 of the file; also its ETag.")
    meta: dict[str, Any] = Field(description="Summary metadata (accuracy, sparsity, parameters...).")
    created_at: datetime = Field(description="When it was exported (UTC).")
    url: str = Field(description="Download path, relative to the API root.",
                     examples=["/v1/jobs/4f1c.../artifacts/trained"])


class NotifyOut(BaseModel):
    webhook_url: str = Field(description="Called with a signed POST on the job's final state.")


class WebhookDeliveryOut(Out):
    """One notification of a final state and how sending it went (retried with backoff until delivered
    or out of attempts)."""

    id: str = Field(description="Delivery id, also sent as the `GLAI-Delivery` header (the same on every "
                                "attempt: drop repeats by it).")
    event: str = Field(description="`job.succeeded`, `job.failed` or `job.cancelled`.")
    url: str = Field(description="Where it is sent.")
    state: str = Field(description="`pending` (being sent or waiting for a retry), `delivered` or `failed` "
                                   "(no attempts left).")
    attempts: int = Field(description="Attempts made so far.")
    next_attempt_at: datetime | None = Field(description="While pending: when the next attempt is due (UTC).")
    last_attempt_at: datetime | None = Field(description="When the last attempt started (UTC).")
    last_status_code: int | None = Field(description="HTTP status of the last answer, if one came.")
    last_error: str | None = Field(description="Why the last attempt failed, if it did.")
    created_at: datetime = Field(description="When the job reached the state it reports (UTC).")
    delivered_at: datetime | None = Field(description="When a receiver accepted it with a 2xx (UTC).")


class WebhookSecretOut(Out):
    """The key your webhook bodies are signed with."""

    secret: str = Field(description="HMAC-SHA256 key. `GLAI-Signature: t=<unix time>,v1=<hex>` where hex is "
                                    "HMAC-SHA256(secret, `<t>.` + raw body); refuse a stale `t`.")
    created_at: datetime = Field(description="When this secret was made (UTC).")


class JobLinks(BaseModel):
    self: str = Field(description="This job.")
    curves: str = Field(description="Metric curves.")
    logs: str = Field(description="Log text.")
    artifacts: str = Field(description="Artifact list.")
    cancel: str = Field(description="POST here to cancel.")


class JobStatus(Out):
    """What a poller needs and nothing more: `GET /v1/jobs/{id}/status` (and the start of every job body)."""

    id: str = Field(description="Job id (32 hex characters).")
    state: str = Field(description="queued, running, cancelling, succeeded, failed or cancelled.")
    phase: str | None = Field(description="While running: embedding, structural, quantitative, pruning, "
                              "baseline or exporting.")
    progress: float = Field(description="Fraction of the current phase done, 0..1.")
    epoch: int | None = Field(description="Current epoch within the phase, if any.")
    cancel_requested: bool = Field(description="A cancel was asked for and not yet honoured.")
    failure_kind: str | None = Field(description="When failed: user_error, gpu_oom, timeout, worker_lost "
                                     "or internal.")
    failure_message: str | None = Field(description="When failed: what happened.")
    attempts: int = Field(description="Times a worker started it (above 1 after a lost worker).")
    created_at: datetime = Field(description="Submission time (UTC).")
    started_at: datetime | None = Field(description="First start (UTC).")
    finished_at: datetime | None = Field(description="When it reached a final state (UTC).")
    updated_at: datetime = Field(description="Last change (UTC).")


class JobBrief(JobStatus):
    """A job as listed: its status, labels and results, without its history."""

    dataset_id: str = Field(description="The dataset it trains on.")
    name: str | None = Field(None, description="The label given at submission, if any.")
    tags: list[str] = Field(default_factory=list, description="The tags given at submission.")
    queue: str = Field("glai", description="The worker pool it runs on.")
    priority: str = Field("normal", description="`high`, `normal` or `low` within its queue.")
    notify: NotifyOut | None = Field(None, description="The webhook given at submission, if any.")
    time_limit_s: int = Field(description="Wall-clock limit in seconds.")
    summary: dict[str, Any] = Field(description="Results once known: accuracies, timings, parameter counts.")
    parent_job_id: str | None = Field(None, description="The job this one continues (incremental), if any.")
    kind: Literal["train", "incremental", "merge", "sweep"] = Field(
        "train", description="`train`, `incremental` (see `parent_job_id`), `merge` or `sweep`.")


class JobOut(JobBrief):
    """A job with its spec, history, results and links."""

    spec: dict[str, Any] = Field(description="The validated request: `config` (glai_core TrainConfig), "
                                 "`backbone`, `validation_fraction`.")
    transitions: list[TransitionOut] = Field(description="Every state and phase change, oldest first.")
    artifacts: list[ArtifactOut] = Field(description="Exported models.")
    webhook_deliveries: list[WebhookDeliveryOut] = Field(
        default_factory=list, description="Notifications of its final states (with `notify`), oldest first.")
    links: JobLinks = Field(description="Related endpoints, relative to the API root.")
    lineage: LineageOut = Field(description="Where its structure and rows come from.")


class JobList(BaseModel):
    items: list[JobBrief] = Field(description="Jobs, newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


# ---------------------------------------------------------------- curves and logs

class CurvePointOut(BaseModel):
    step: int = Field(description="Epoch within the phase (sparsity level index for pruning).")
    value: float = Field(description="Metric value.")
    wall_time: float = Field(description="Seconds since the phase started.")


class CurveSeries(BaseModel):
    key: str = Field(description="Metric name, e.g. `val_accuracy`.", examples=["val_accuracy"])
    phase: str = Field(description="Phase that produced it.", examples=["structural"])
    total_points: int = Field(description="Points stored before downsampling.")
    points: list[CurvePointOut] = Field(description="Points in step order (downsampled when asked).")


class Curves(BaseModel):
    series: list[CurveSeries] = Field(description="One entry per (metric, phase).")


class LogChunk(BaseModel):
    text: str = Field(description="Log text from `offset` on (whole lines).")
    next_offset: int = Field(description="Byte offset to ask for next; equal to `offset` when nothing new.")


# ---------------------------------------------------------------- predictions

class PredictIn(In):
    """Rows to classify with one of the job's models, on the server. Send exactly one of `rows` and
    `texts`; at most GLAI_MAX_PREDICT_ROWS of them, and the body within GLAI_MAX_REQUEST_BYTES."""

    artifact: str = Field("trained", min_length=1, max_length=64,
                          description="The model: `trained`, `pruned-<pct>` or `baseline`.",
                          examples=["trained", "pruned-50"])
    rows: list[list[float]] | None = Field(
        None, min_length=1, description="Feature rows as uploaded (the model's `n_features` numbers each; "
        "the model standardises them itself). For a model on a frozen backbone: the backbone's embeddings.",
        examples=[[[5.1, 3.5, 1.4, 0.2]]])
    texts: list[str] | None = Field(
        None, min_length=1, description="Raw texts, for a model trained on the `minilm` text backbone: "
        "embedded on the server as at training time (at most GLAI_MAX_PREDICT_TEXT_CHARS characters each).",
        examples=[["what a lovely day"]])


class PredictOut(BaseModel):
    """One predicted class per row, with the probability of every class."""

    artifact: str = Field(description="The model that answered.")
    sha256: str = Field(description="SHA-256 of that model's file (its download's ETag).")
    class_names: list[str] = Field(description="Every class, in the order of each `probabilities` row.")
    classes: list[str] = Field(description="The most likely class of each row, in request order.")
    probabilities: list[list[float]] = Field(description="Per row, the softmax probability of each class "
                                             "(in `class_names` order).")
