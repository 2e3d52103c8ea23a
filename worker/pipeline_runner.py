"""One attempt at one job: claim, load data, train, export, final state exactly once.

Everything the attempt learns reaches the database through the ``JobReporter``; the final state goes
through ``glai_common.jobs.finish``, which refuses if the job is already final or the lease was lost.

Faults, and what an attempt does about them:

* time limit: counted over the whole job (the running time of earlier attempts, from the transitions,
  plus this attempt's clock); on expiry the job fails as ``timeout`` with the checkpoints kept and a
  partial summary of what was reached (its owner may resume it); a job that succeeds or is cancelled
  has its checkpoints removed;
* database away mid-training: the reporter buffers; a database error in the training thread itself
  (data loading, export) hands the job back instead of failing it; writing the final state is retried
  for about a lease, after which the task's own retry and the reaper take over;
* cancel not honoured: escalated by the reporter thread (``worker.escalation``);
* lease lost (the job was reaped while this worker could not reach the database): stop at the next step
  and write nothing final; the new attempt owns the job.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from glai_common import jobs
from glai_common.models import Dataset
from glai_common.states import CANCELLED, FAILED, SUCCEEDED
from glai_common.storage import StorageUnavailable
from glai_core.hooks import Cancelled
from worker import lineage_runner
from worker.checkpoint_sync import CheckpointWorkspace
from worker.context import WorkerContext
from worker.datasets import DatasetInfo, load_training_data
from worker.escalation import CancelEscalation, exit_now
from worker.export import EXPORTING, export_result, heldout_rows
from worker.failures import Failure, UserError, classify
from worker.hooks import STOP_CANCEL, STOP_LEASE_LOST, STOP_SHUTDOWN, STOP_TIMEOUT, DatabaseHooks
from worker.job_config import job_config
from worker.reporter import JobReporter

log = logging.getLogger(__name__)

# Errors that mean "the database is unreachable right now", not "this job is broken".
DB_UNAVAILABLE = (OperationalError, InterfaceError)


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
    elapsed_s: float = 0.0  # running time of the earlier attempts


def _claim(ctx: WorkerContext, job_id: str, worker_id: str) -> Claimed | None:
    settings = ctx.settings
    with ctx.session() as session:
        job = jobs.claim_job(session, job_id, worker_id, lease_s=settings.worker_lease_s,
                             max_attempts=settings.max_job_attempts)
        if job is None:
            return None
        dataset = session.get(Dataset, job.dataset_id)
        assert dataset is not None  # the foreign key guarantees it
        elapsed = jobs.running_seconds(session, job.id) if job.attempts > 1 else 0.0
        return Claimed(job.id, dict(job.spec or {}), job.time_limit_s, job.attempts, DatasetInfo(
            dataset.id, dataset.kind, dataset.file_format, dataset.text_column, dataset.label_column,
            dataset.storage_key), elapsed)


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
    if config.device_memory_budget_bytes is None:  # the operator's budget unless the job set its own
        config.device_memory_budget_bytes = ctx.settings.device_memory_budget_bytes
    hooks.reporter.log(f"device {config.device}")
    loaded = load_training_data(ctx, claimed.dataset, claimed.spec.get("backbone"), hooks, device)
    if lineage_runner.kind_of(claimed.spec) != "train":  # incremental, merge, sweep (issue 17)
        return lineage_runner.run(ctx, claimed, config, loaded, hooks, device)
    result = run_pipeline(loaded.data, config, hooks)
    if hooks.should_stop():  # a cancel that arrived after the last step: honour it before exporting
        raise Cancelled("stopped before export")
    hooks.on_phase_start(EXPORTING)
    class_names = list(loaded.data.class_names)
    settings_file = job_config(claimed.job_id, claimed.dataset.id, claimed.spec, config, result.summary,
                               class_names, claimed.time_limit_s)
    artifacts = export_result(ctx, claimed.job_id, result, class_names, loaded.preprocessing,
                              heldout=heldout_rows(loaded.data, config.validation_fraction, config.seed),
                              job_config=settings_file, log=hooks.reporter.log)
    lineage_runner.keep_root_statistics(ctx, claimed.job_id, claimed.spec, claimed.dataset.id, result,
                                        loaded.data, config, hooks)
    hooks.on_phase_end(EXPORTING, {"artifacts": float(len(artifacts))})
    return dict(result.summary)


def execute_job(ctx: WorkerContext, job_id: str, shutdown: threading.Event | None = None,
                exit_process: Callable[[], None] = exit_now) -> str:
    """Run one attempt; returns what happened (for the worker log). Never raises for job failures;
    raises ``OperationalError``-like database errors only when the job could not be claimed or handed
    back, so the task retries its message."""
    worker_id = make_worker_id()
    claimed = _claim(ctx, job_id, worker_id)
    if claimed is None:
        log.info("job %s not claimed (missing, final or held by a live lease): message dropped", job_id)
        return "skipped"
    settings = ctx.settings
    reporter = JobReporter(ctx, job_id, worker_id)
    # Where training checkpoints: the stored directory, or a local one mirrored to object storage.
    workspace = CheckpointWorkspace(ctx.storage, job_id, settings.resolved_staging_dir / "work")
    escalation = CancelEscalation(settings.cancel_grace_s, settings.cancel_force_s,
                                  lambda reason: _record_cancelled(ctx, job_id, worker_id, reason, workspace),
                                  exit_process)
    reporter.escalation = escalation
    reporter.start()
    try:
        checkpoints = workspace.open()
    except StorageUnavailable as exc:
        reporter.stop()
        reporter.log(f"object storage unavailable at startup: {exc}; handing the job back")
        workspace.close(push=False)
        return _hand_back(ctx, job_id, worker_id, reporter, exc)
    remaining = claimed.time_limit_s - claimed.elapsed_s
    hooks = DatabaseHooks(reporter, checkpoints, time.monotonic() + remaining, shutdown,
                          settings.checkpoint_interval_s)
    reporter.log(f"attempt {claimed.attempts} on {worker_id}"
                 + (f" ({claimed.elapsed_s:.0f} s of the {claimed.time_limit_s} s limit used before)"
                    if claimed.elapsed_s else ""))
    if claimed.attempts > 1:
        _backfill_curves(reporter, checkpoints)
    try:
        reporter.flush()  # the attempt line reaches the log even if this worker dies in its first second
    except Exception:  # noqa: BLE001 - the reporter thread retries
        log.warning("job %s: first flush failed; the reporter retries it", job_id)
    summary: dict[str, Any] | None = None
    failure: Failure | None = None
    try:
        with escalation.armed():
            summary = _train_and_export(ctx, claimed, hooks)
    except Cancelled:
        failure = _stopped(hooks, claimed, checkpoints)
    except (KeyboardInterrupt, SystemExit):
        reporter.stop()
        workspace.close()
        with ctx.session() as session:  # the worker is going down: let the reaper hand the job on now
            jobs.release(session, job_id, worker_id)
        raise
    except (*DB_UNAVAILABLE, StorageUnavailable) as exc:
        # The database or the object store went away under the training thread (data loading, export):
        # not the job's fault.
        reporter.stop()
        workspace.close()
        what = "object storage" if isinstance(exc, StorageUnavailable) else "database"
        reporter.log(f"{what} unavailable during {hooks.current_phase or 'startup'}: "
                     f"{type(exc).__name__}; handing the job back")
        return _hand_back(ctx, job_id, worker_id, reporter, exc)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a final state with a kind
        failure = classify(exc, hooks.current_phase)
        reporter.log(f"failed ({failure.kind}): {failure.message}")
        reporter.log(traceback.format_exc().rstrip())
        _free_gpu_memory()
    finally:
        reporter.stop()
    if failure is not None and failure.kind == "timeout":
        summary = partial_summary(hooks, checkpoints, claimed)
    # Before the final state: the next attempt (or a resume) must find the last checkpoints. A succeeded
    # job's are removed anyway.
    workspace.close(push=not (failure is None and summary is not None))
    return _finish_retrying(ctx, job_id, worker_id, summary, failure, hooks)


def _record_cancelled(ctx: WorkerContext, job_id: str, worker_id: str, reason: str,
                      workspace: CheckpointWorkspace | None = None) -> bool:
    """The forced cancel (escalation step 2): recorded by the reporter, checkpoints removed as for any
    cancelled job; the process exits right after."""
    with ctx.session() as session:
        recorded = jobs.finish(session, job_id, worker_id, CANCELLED, reason=reason)
    if recorded:
        if workspace is not None:
            workspace.close(push=False)  # no upload may bring them back after the removal
        _remove_checkpoints(ctx, job_id)
    return recorded


def _hand_back(ctx: WorkerContext, job_id: str, worker_id: str, reporter: JobReporter,
               exc: Exception) -> str:
    """Expire our lease so the job is requeued at once (resuming from its checkpoint), then let the task
    retry its message. If even that fails, the lease runs out by itself and a reaper requeues it."""
    try:
        reporter.flush()
        with ctx.session() as session:
            jobs.release(session, job_id, worker_id)
    except DB_UNAVAILABLE:
        log.warning("job %s: database still unavailable; its lease will expire and a reaper requeues it",
                    job_id)
        raise exc from None
    raise exc


def _backfill_curves(reporter: JobReporter, checkpoints: Path) -> None:
    """Points of steps that reached a checkpoint but not the database (the worker died between the two)
    are in the checkpoint's history: offer them again before training continues. Existing points are
    kept as they were (unique on job, series, phase, step), so each curve stays gap-free and in step
    order."""
    for phase, state in checkpoint_states(checkpoints).items():
        points = [jobs.Point(name, phase, int(entry["step"]), float(value), float(entry.get("seconds", 0.0)))
                  for entry in state.get("history", []) if "step" in entry
                  for name, value in entry.items()
                  if name not in ("step", "seconds") and isinstance(value, int | float)]
        if points:
            reporter.points(points)


def checkpoint_states(checkpoints: Path) -> dict[str, dict[str, Any]]:
    """Each phase checkpoint's saved state (metadata only: no tensor is read). Unreadable ones are
    skipped: a resume from them will fail or restart on its own terms."""
    import json

    from safetensors import safe_open

    from glai_core.checkpoint import META_KEY

    states: dict[str, dict[str, Any]] = {}
    for path in sorted(checkpoints.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                states[path.stem] = json.loads(handle.metadata()[META_KEY])["state"]
        except Exception:  # noqa: BLE001 - best effort
            log.warning("checkpoint %s unreadable", path)
    return states


def partial_summary(hooks: DatabaseHooks, checkpoints: Path, claimed: Claimed) -> dict[str, Any]:
    """What a job that ran out of time reached: per phase its checkpointed step, best accuracy and last
    metrics (over all attempts), plus this attempt's phase summaries. Checkpoints stay in storage."""
    phases: dict[str, dict[str, Any]] = {}
    for phase, state in checkpoint_states(checkpoints).items():
        history = state.get("history") or []
        last = {k: v for k, v in (history[-1] if history else {}).items() if k != "seconds"}
        phases[phase] = {"steps": state.get("step"), "finished": bool(state.get("finished")),
                         "best_step": state.get("best_step"), "best_accuracy": state.get("best_accuracy"),
                         "stopped_by": state.get("stopped_by"),
                         "last": last,
                         "checkpoint": f"jobs/{claimed.job_id}/checkpoints/{phase}.safetensors"}
    for phase, summary in hooks.phase_summaries.items():
        phases.setdefault(phase, {}).update({"summary": summary})
    for phase, metrics in hooks.last_metrics.items():
        phases.setdefault(phase, {}).setdefault("last", metrics)
    return json_safe({"partial": True, "stopped_by": "timeout", "phase_reached": hooks.current_phase,
                      "time_limit_s": claimed.time_limit_s, "attempts": claimed.attempts, "phases": phases})


def json_safe(value: Any) -> Any:
    """Non-finite floats become None: JSON (and PostgreSQL's json type) has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _stopped(hooks: DatabaseHooks, claimed: Claimed, checkpoints: Path) -> Failure | None:
    reason = hooks.stop_reason
    if reason == STOP_TIMEOUT:
        hooks.reporter.log(f"time limit of {claimed.time_limit_s} s reached; checkpoints are kept "
                           f"under jobs/{claimed.job_id}/checkpoints/")
        spent = " over all attempts" if claimed.attempts > 1 else ""
        return Failure("timeout", f"the job exceeded its time limit of {claimed.time_limit_s} s{spent} "
                                  f"during {hooks.current_phase or 'startup'}; checkpoints and a partial "
                                  "summary are kept")
    if reason in (STOP_LEASE_LOST, STOP_SHUTDOWN):
        return None  # not ours to finish: another attempt will resume from the checkpoint
    return Failure("cancelled", "cancelled by request")  # STOP_CANCEL, an escalation, a backbone's stop


def _finish_retrying(ctx: WorkerContext, job_id: str, worker_id: str, summary: dict[str, Any] | None,
                     failure: Failure | None, hooks: DatabaseHooks) -> str:
    """``_finish``, retried while the database is unreachable for about a lease. Safe to repeat: the
    final state is written once by the lease holder; if a reaper took the job meanwhile we are refused
    and the next attempt finishes it (from the checkpoints, which make it quick)."""
    deadline = time.monotonic() + max(10.0, float(ctx.settings.worker_lease_s))
    delay = 0.5
    while True:
        try:
            hooks.reporter.flush()  # what the stopped reporter could not write yet
            return _finish(ctx, job_id, worker_id, summary, failure, hooks)
        except DB_UNAVAILABLE:
            if time.monotonic() + delay > deadline:
                raise  # the task retries; the lease expires and a reaper hands the job on
            log.warning("job %s: database unavailable while finishing; retrying in %.1f s", job_id, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


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
                               failure_kind=failure.kind, summary=summary)
            outcome = f"{FAILED} ({failure.kind})"
    if not done:
        log.warning("job %s: final state %s not recorded (already final or lease lost)", job_id, outcome)
        return "lost"
    if outcome in (SUCCEEDED, CANCELLED):
        _remove_checkpoints(ctx, job_id)
    return outcome


def _remove_checkpoints(ctx: WorkerContext, job_id: str) -> None:
    """Checkpoints serve a resume: a succeeded job has its models and a cancelled one cannot be resumed,
    so theirs go; a failed (or timed-out) job keeps them for ``POST /v1/jobs/{id}/resume``."""
    try:
        ctx.storage.delete_prefix(f"jobs/{job_id}/checkpoints")
    except OSError:  # the state is recorded; a leftover directory only costs disk space
        log.warning("job %s: could not remove its checkpoints", job_id, exc_info=True)


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
