"""Map an exception from a job to a failure kind and a message written for the user."""

from __future__ import annotations

from dataclasses import dataclass

from glai_core.data import DataError

SIZE_ADVICE = ("shrink structural.batch_size, quantitative.batch_size and baseline.batch_size, or "
               "architecture.hidden (the reference widths; GLAI's path weights grow with their product), "
               "or set a larger architecture.reduction_factor")


class UserError(Exception):
    """Raised by the worker itself for a request it cannot run (bad spec, missing dataset)."""


@dataclass(frozen=True)
class Failure:
    kind: str  # one of glai_common.states.FAILURE_KINDS
    message: str
    retryable: bool = False  # never: a failed job stays failed; kept explicit for readers


def is_gpu_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    markers = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
    return isinstance(exc, RuntimeError) and any(marker in text for marker in markers)


def classify(exc: BaseException, phase: str | None) -> Failure:
    where = f" during {phase}" if phase else ""
    if is_gpu_oom(exc):
        return Failure("gpu_oom", f"the GPU ran out of memory{where}: {SIZE_ADVICE}")
    if isinstance(exc, DataError):
        field = f" (field: {exc.field})" if exc.field else ""
        return Failure("user_error", f"{exc.message}{field}")
    if isinstance(exc, UserError | ValueError):
        return Failure("user_error", str(exc) or type(exc).__name__)
    return Failure("internal", f"{type(exc).__name__}{where}: {exc}")
