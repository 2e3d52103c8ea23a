"""Deployment limits on a job request, checked before anything is stored.

Pydantic (``api.schemas``) refuses what is wrong for every deployment (negative widths, NaN learning
rates); this module refuses what is too big for *this* deployment: layers, widths, epochs, time, trainable
parameters and the job's estimated peak memory on its device. Each refusal is a 422 that names the field,
the value, the limit and the setting that holds it, so the user can fix the request without guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.errors import ApiError
from glai_common.settings import Settings
from glai_core.model import ParameterMatch
from glai_core.pipeline import architecture_match

F32, F64 = 4, 8
ADAM_COPIES = 4  # weights, gradients and Adam's two moments, all float32
RIDGE_CHUNK_BYTES = 256 * 1024**2  # a generous bound on the ridge solver's per-chunk feature block


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of the most demanding phase, which phase that is and which request field drives it."""

    peak_bytes: int
    phase: str
    field: str
    per_phase: dict[str, int]


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def estimate_memory(config: dict[str, Any], match: ParameterMatch, n_features: int, n_classes: int,
                    n_rows: int) -> MemoryEstimate:
    """A deliberately simple, slightly pessimistic estimate of a job's peak device memory.

    Phases run one after another, so the peak is the largest phase. Each phase counts its trainable
    parameters x (weights + grads + 2 Adam moments); one batch of activations kept for backward; the
    dataset resident on the device (float32 features, int64 labels). Phase 2 adds the frozen structural
    net, the cached gates and, for the ridge solver, the float64 normal matrix (D+1)^2 -- unless that
    exceeds ``max_normal_matrix_bytes``, where the solver switches to matrix-free CG.
    """
    d, m = n_features, n_classes
    data = n_rows * (d * F32 + F64)
    glai_hidden, ref_hidden = match.glai_hidden, match.reference_hidden
    theta = match.glai_trainable_params - m  # Theta's entries: m x h_L x ... x (d+1)
    per_sample_u = theta // (d + 1)  # GLAIBlock.forward contracts the input first
    dim = theta // m  # D: path features per sample, the ridge system's size
    frozen = match.structure_params * F32 + n_rows * sum(glai_hidden) + data  # + bool gates
    structural, quantitative = config["structural"], config["quantitative"]
    baseline, pruning = config["baseline"], config["pruning"]

    def mlp_batch(batch: int, hidden: list[int]) -> int:
        return 2 * batch * (d + sum(hidden) + m) * F32

    # phase -> {blamed field: bytes}; the largest part names the field to change
    parts: dict[str, dict[str, int]] = {
        "structural": {"architecture.hidden": ADAM_COPIES * match.structure_params * F32,
                       "structural.batch_size": mlp_batch(structural["batch_size"], glai_hidden),
                       "dataset_id": data},
    }
    glai_adam = {"architecture.hidden": ADAM_COPIES * theta * F32 + frozen - data,
                 "quantitative.batch_size": 3 * quantitative["batch_size"] * per_sample_u * F32,
                 "dataset_id": data}
    if quantitative["solver"] != "ridge" and quantitative["epochs"] > 0:
        parts["quantitative"] = glai_adam
    # "auto" may pick the exact closed form, but only one that fits max_normal_matrix_bytes: count it.
    if "ridge" in quantitative["solver"] or quantitative["solver"] == "auto":
        normal = F64 * (dim + 1) ** 2
        if normal > quantitative.get("max_normal_matrix_bytes", 2 * 1024**3):
            normal = 4 * F64 * (dim + 1) * m  # conjugate gradients keep a few vectors only
        parts["ridge"] = {"quantitative.solver": normal + F64 * (dim + 1) * m
                          + min(RIDGE_CHUNK_BYTES, n_rows * (dim + 1) * F64),
                          "architecture.hidden": theta * F32 + frozen - data, "dataset_id": data}
    if pruning["enabled"] and pruning["sparsities"] and pruning["finetune_epochs"] > 0:
        parts["pruning"] = glai_adam
    if baseline["enabled"]:
        parts["baseline"] = {"architecture.hidden": ADAM_COPIES * match.mlp_params * F32,
                             "baseline.batch_size": mlp_batch(baseline["batch_size"], ref_hidden),
                             "dataset_id": data}
    per_phase = {phase: sum(p.values()) for phase, p in parts.items()}
    phase = max(per_phase, key=lambda k: per_phase[k])
    field = max(parts[phase], key=lambda k: parts[phase][k])
    return MemoryEstimate(peak_bytes=int(per_phase[phase]), phase=phase, field=field, per_phase=per_phase)


def resolved_config(config: dict[str, Any], n_rows: int, d: int, m: int) -> dict[str, Any]:
    """The stored config with its "auto" fields chosen as the worker will choose them (``n_rows`` stands
    in for the training rows: batch sizes grow with N, so the estimate stays on the safe side)."""
    from glai_core.config import TrainConfig
    from glai_core.defaults import adapt

    return adapt(TrainConfig.from_dict(config), max(1, n_rows), d, m)[0].to_dict()


def check_limits(spec: dict[str, Any], time_limit_s: int, n_features: int, n_classes: int, n_rows: int,
                 settings: Settings) -> ParameterMatch:
    """Raise a 422 for the first limit the request breaks; return the parameter match otherwise.

    ``n_features`` is what the job trains on (a backbone's embedding width for text/image datasets),
    ``n_rows`` the samples resident on the device (training plus validation).
    """
    config = spec["config"]
    hidden: list[int] = config["architecture"]["hidden"]
    if len(hidden) > settings.max_hidden_layers:
        raise ApiError(422, f"at most {settings.max_hidden_layers} hidden layers are allowed (got "
                            f"{len(hidden)}; GLAI_MAX_HIDDEN_LAYERS)", "architecture.hidden")
    for index, width in enumerate(hidden):
        if width > settings.max_hidden_width:
            raise ApiError(422, f"hidden width {width} is above the limit of {settings.max_hidden_width} "
                                "(GLAI_MAX_HIDDEN_WIDTH)", f"architecture.hidden.{index}")
    epochs = {"structural.max_epochs": config["structural"]["max_epochs"],
              "quantitative.epochs": config["quantitative"]["epochs"],
              "pruning.finetune_epochs": config["pruning"]["finetune_epochs"],
              "baseline.max_epochs": config["baseline"]["max_epochs"]}
    for name, value in epochs.items():  # "auto" (None) budgets are the library's, capped by it
        if value is not None and value > settings.max_epochs:
            raise ApiError(422, f"{name} is {value}, above the limit of {settings.max_epochs} epochs "
                                "(GLAI_MAX_EPOCHS)", name)
    if time_limit_s > settings.max_job_time_limit_s:
        raise ApiError(422, f"time_limit_s is {time_limit_s}, above the limit of "
                            f"{settings.max_job_time_limit_s} s (GLAI_MAX_JOB_TIME_LIMIT_S)", "time_limit_s")
    try:
        match = architecture_match(n_features, hidden, n_classes, config["architecture"]["reduction_factor"],
                                   max(1, n_rows))
    except (ValueError, OverflowError, ZeroDivisionError) as exc:
        raise ApiError(422, f"architecture cannot be matched to this dataset (d={n_features}, "
                            f"m={n_classes}): {exc}", "architecture") from exc
    for index, width in enumerate(match.glai_hidden):
        if width > settings.max_hidden_width:  # r < 1 makes GLAI wider than the reference
            raise ApiError(422, f"reduction_factor {match.reduction_factor:g} makes GLAI hidden width "
                                f"{width} (layer {index}), above the limit of {settings.max_hidden_width} "
                                "(GLAI_MAX_HIDDEN_WIDTH)", "architecture.reduction_factor")
    largest = max(match.glai_trainable_params, match.mlp_params, match.structure_params)
    if largest > settings.max_trainable_params:
        raise ApiError(422, f"this architecture needs about {largest:,} trainable parameters on this dataset "
                            f"(d={n_features}, m={n_classes}), above the limit of "
                            f"{settings.max_trainable_params:,} (GLAI_MAX_TRAINABLE_PARAMS); use smaller "
                            "hidden widths or a larger reduction_factor", "architecture.hidden")
    estimate = estimate_memory(resolved_config(config, n_rows, n_features, n_classes), match, n_features,
                               n_classes, n_rows)
    if estimate.peak_bytes > settings.max_job_memory_bytes:
        raise ApiError(422, f"this job needs an estimated {_gib(estimate.peak_bytes)} of device memory in "
                            f"its {estimate.phase} phase, above the limit of "
                            f"{_gib(settings.max_job_memory_bytes)} (GLAI_MAX_JOB_MEMORY_BYTES); use smaller "
                            "hidden widths, smaller batches or a larger reduction_factor", estimate.field,
                       extra={"estimated_bytes": estimate.peak_bytes,
                              "limit_bytes": settings.max_job_memory_bytes})
    return match
