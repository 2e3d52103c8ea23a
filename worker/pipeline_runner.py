"""One attempt at one job: claim, load data, train, export, final state exactly once.

Everything the attempt learns reaches the database through the ``JobReporter``; the final state goes
through ``glai_common.jobs.finish``, which refuses if the job is already final or the lease was lost.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from glai_common import jobs
from glai_common.models import Dataset
from glai_common.states import CANCELLED, FAILED, SUCCEEDED
from glai_core.hooks import Cancelled
from worker.context import WorkerContext
from worker.datasets import DatasetInfo, load_training_data
from worker.export import EXPORTING, export_result
from worker.failures import Failure, UserError, classify
from worker.hooks import STOP_CANCEL, STOP_LEASE_LOST, STOP_SHUTDOWN, STOP_TIMEOUT, DatabaseHooks
from worker.reporter import JobReporter

log = logging.getLogger(__name__)


def make_worker_id() -> str:
    """Unique per attempt: a restarted process on the same host never mistakes an old lease for its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Claimed:
    job_id: str
    spec: dict[str, Any]
    time_limit_s: int
    attempts: int
    dataset: DatasetInfo


def _claim(ctx: WorkerContext, job_id: str, worker_id: str) -> Claimed | None:
    settings = ctx.settings
    with ctx.session() as session:
        job = jobs.claim_job(session, job_id, worker_id, lease_s=settings.worker_lease_s,
                             max_attempts=settings.max_job_attempts)
        if job is None:
            return None
        dataset = session.get(Dataset, job.dataset_id)
        assert dataset is not None  # the foreign key guarantees it
        return Claimed(job.id, dict(job.spec or {}), job.time_limit_s, job.attempts, DatasetInfo(
            dataset.id, dataset.kind, dataset.file_format, dataset.text_column, dataset.label_column,
            dataset.storage_key))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"  # first CUDA touch: inside the task


def _config(spec: dict[str, Any]) -> Any:
    from glai_core.config import TrainConfig

    raw = spec.get("config")
    if not isinstance(raw, dict):
        raise UserError("the job spec has no 'config' object")
    try:
        config = TrainConfig.from_dict(raw)
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"invalid training config: {exc}") from exc
    if "validation_fraction" in spec and "validation_fraction" not in raw:
        config.validation_fraction = float(spec["validation_fraction"])
    return config


def _train_and_export(ctx: WorkerContext, claimed: Claimed, hooks: DatabaseHooks) -> dict[str, Any]:
    from glai_core.pipeline import run_pipeline

    config = _config(claimed.spec)
    device = _device()
    if config.device == "auto":
        config.device = device
    hooks.reporter.log(f"device {config.device}")
    loaded = load_training_data(ctx, claimed.dataset, claimed.spec.get("backbone"), hooks, device)
    result = run_pipeline(loaded.data, config, hooks)
    if hooks.should_stop():  # a cancel that arrived after the last step: honour it before exporting
        raise Cancelled("stopped before export")
    hooks.on_phase_start(EXPORTING)
    artifacts = export_result(ctx, claimed.job_id, result, list(loaded.data.class_names),
                              loaded.preprocessing)
    hooks.on_phase_end(EXPORTING, {"artifacts": float(len(artifacts))})
    return dict(result.summary)


def execute_job(ctx: WorkerContext, job_id: str, shutdown: threading.Event | None = None) -> str:
    """Run one attempt; returns what happened (for the worker log). Never raises for job failures."""
    worker_id = make_worker_id()
    claimed = _claim(ctx, job_id, worker_id)
    if claimed is None:
        log.info("job %s not claimed (missing, final or held by a live lease): message dropped", job_id)
        return "skipped"
    reporter = JobReporter(ctx, job_id, worker_id).start()
    checkpoints = ctx.storage.local_path(f"jobs/{job_id}/checkpoints")
    checkpoints.mkdir(parents=True, exist_ok=True)
    hooks = DatabaseHooks(reporter, checkpoints, time.monotonic() + claimed.time_limit_s, shutdown)
    reporter.log(f"attempt {claimed.attempts} on {worker_id}")
    summary: dict[str, Any] | None = None
    failure: Failure | None = None
    try:
        summary = _train_and_export(ctx, claimed, hooks)
    except Cancelled:
        failure = _stopped(hooks, claimed)
    except (KeyboardInterrupt, SystemExit):
        reporter.stop()
        with ctx.session() as session:  # the worker is going down: let the reaper hand the job on now
            jobs.release(session, job_id, worker_id)
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a final state with a kind
        failure = classify(exc, hooks.current_phase)
        reporter.log(f"failed ({failure.kind}): {failure.message}")
        reporter.log(traceback.format_exc().rstrip())
        _free_gpu_memory()
    finally:
        reporter.stop()
    return _finish(ctx, job_id, worker_id, summary, failure, hooks)


def _stopped(hooks: DatabaseHooks, claimed: Claimed) -> Failure | None:
    reason = hooks.stop_reason
    if reason == STOP_TIMEOUT:
        hooks.reporter.log(f"time limit of {claimed.time_limit_s} s reached; checkpoints are kept")
        return Failure("timeout", f"the job exceeded its time limit of {claimed.time_limit_s} s "
                                  f"during {hooks.current_phase or 'startup'}")
    if reason in (STOP_LEASE_LOST, STOP_SHUTDOWN):
        return None  # not ours to finish: another attempt will resume from the checkpoint
    return Failure("cancelled", "cancelled by request")  # STOP_CANCEL, or a backbone's own stop


def _finish(ctx: WorkerContext, job_id: str, worker_id: str, summary: dict[str, Any] | None,
            failure: Failure | None, hooks: DatabaseHooks) -> str:
    if summary is None and failure is None:
        with ctx.session() as session:
            jobs.release(session, job_id, worker_id)
        return f"released ({hooks.stop_reason})"
    with ctx.session() as session:
        if failure is None:
            done = jobs.finish(session, job_id, worker_id, SUCCEEDED, reason="finished", summary=summary)
            outcome = SUCCEEDED
        elif failure.kind == "cancelled" or hooks.stop_reason == STOP_CANCEL:
            done = jobs.finish(session, job_id, worker_id, CANCELLED, reason=failure.message)
            outcome = CANCELLED
        else:
            done = jobs.finish(session, job_id, worker_id, FAILED, reason=failure.message,
                               failure_kind=failure.kind)
            outcome = f"{FAILED} ({failure.kind})"
    if not done:
        log.warning("job %s: final state %s not recorded (already final or lease lost)", job_id, outcome)
        return "lost"
    return outcome


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
