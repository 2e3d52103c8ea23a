"""A finished GLAI job (and a failed one) written through glai_common's models, with real artifact files.

The numbers follow the shape a real run has: the structural phase stops early on its distance criterion,
the quantitative phase warm-starts high, pruning degrades gracefully and the MLP baseline needs longer to
reach the target accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from sqlalchemy.orm import Session

from glai_common.models import ApiKey, Artifact, CurvePoint, Dataset, Job, JobTransition
from glai_common.storage import LocalStorage, sha256_file

STRUCTURAL_EPOCHS = 24  # the structural phase stopped here: the stop point
QUANTITATIVE_EPOCHS = 30
BASELINE_EPOCHS = 60
SPARSITIES = (0.25, 0.5, 0.7, 0.8, 0.9)
TARGET = 0.9


@dataclass
class Seeded:
    key: str
    owner: str
    job_id: str
    failed_job_id: str
    running_job_id: str
    artifact_files: dict[str, Path] = field(default_factory=dict)
    database_url: str = ""
    storage_dir: Path = Path()


def _curve(start: float, end: float, epochs: int, rate: float, wobble: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [end + (start - end) * math.exp(-rate * e) + float(rng.normal(0, wobble)) for e in range(epochs)]


def curve_points(job_id: str) -> list[CurvePoint]:
    points: list[CurvePoint] = []

    def add(series: str, phase: str, values: list[float], seconds_per_step: float) -> None:
        points.extend(CurvePoint(job_id=job_id, series=series, phase=phase, step=i, value=v,
                                 wall_time=round((i + 1) * seconds_per_step, 3))
                      for i, v in enumerate(values))

    n = STRUCTURAL_EPOCHS
    add("train_loss", "structural", _curve(2.2, 0.32, n, 0.18, 0.01, 1), 0.8)
    add("val_loss", "structural", _curve(2.2, 0.41, n, 0.16, 0.015, 2), 0.8)
    add("val_accuracy", "structural", _curve(0.2, 0.88, n, 0.2, 0.006, 3), 0.8)
    add("unit_distance", "structural", _curve(0.6, 0.004, n, 0.25, 0.002, 4), 0.8)
    add("path_distance", "structural", _curve(0.9, 0.01, n, 0.22, 0.003, 5), 0.8)
    n = QUANTITATIVE_EPOCHS
    add("train_loss", "quantitative", _curve(0.35, 0.12, n, 0.15, 0.006, 6), 0.5)
    add("val_loss", "quantitative", _curve(0.4, 0.22, n, 0.14, 0.008, 7), 0.5)
    add("val_accuracy", "quantitative", _curve(0.87, 0.945, n, 0.15, 0.003, 8), 0.5)
    n = BASELINE_EPOCHS
    add("train_loss", "baseline", _curve(2.3, 0.15, n, 0.07, 0.01, 9), 1.1)
    add("val_loss", "baseline", _curve(2.3, 0.26, n, 0.065, 0.012, 10), 1.1)
    add("val_accuracy", "baseline", _curve(0.15, 0.935, n, 0.07, 0.005, 11), 1.1)
    add("sparsity", "pruning", list(SPARSITIES), 2.0)
    add("pruned_accuracy", "pruning", list(PRUNED_ACCURACY), 2.0)
    return points


PRUNED_ACCURACY = (0.944, 0.941, 0.93, 0.912, 0.86)
SUMMARY = {
    "glai_accuracy": 0.9447, "structure_accuracy": 0.8801, "warm_start_accuracy": 0.8712,
    "baseline_accuracy": 0.9351,
    "pruned": {str(s): a for s, a in zip(SPARSITIES, PRUNED_ACCURACY, strict=True)},
    "structural_epochs": STRUCTURAL_EPOCHS, "baseline_epochs": BASELINE_EPOCHS,
    "glai_seconds": 34.2, "baseline_seconds": 66.0, "target_accuracy": TARGET,
    "glai_time_to_target_s": 21.7, "baseline_time_to_target_s": 44.0, "speedup": 2.03,
    "reduction_factor": 3.1, "glai_hidden": [256, 256], "reference_hidden": [512, 512],
    "mlp_params": 535_818, "glai_trainable_params": 172_810, "structure_params": 535_818,
    "stopped_by": "distance", "total_time_speedup": 1.93, "phase2_solver": "ridge+lbfgs",
    "effective_settings": {"data": {"n_train": 1437, "d": 64, "m": 10}, "structural": {"batch_size": 32},
                           "quantitative": {}, "baseline": {},
                           "chosen": {"structural.batch_size": "N=1,437 rows: a power of two near N/32"}},
}


def _artifact_file(directory: Path, name: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path = directory / f"{name}.safetensors"
    save_file({"theta": rng.standard_normal((64, 40)).astype(np.float32),
               "mask": (rng.random(64) > 0.3).astype(np.float32)}, str(path),
              metadata={"glai": json.dumps({"name": name, "summary": SUMMARY})})
    return path


def seed_database(session: Session, storage: LocalStorage, scratch: Path,
                  key: str = "glai_test_dashboard_key", owner: str = "alice") -> Seeded:
    """Insert an API key, a dataset, a succeeded job with curves and artifacts, and a failed job."""
    session.add(ApiKey(owner=owner, name="browser test", key_hash=hashlib.sha256(key.encode()).hexdigest(),
                       prefix=key[:12]))
    dataset = Dataset(owner=owner, name="mnist1d", source="builtin", file_format="builtin", sha256="0" * 64,
                      size_bytes=0, n_samples=4000, n_features=40, n_classes=10, n_validation=800,
                      class_names=[str(i) for i in range(10)], storage_key="datasets/builtin-mnist1d")
    session.add(dataset)
    session.flush()

    now = datetime.now(UTC)
    started = now - timedelta(minutes=3)
    job = Job(owner=owner, dataset_id=dataset.id, state="succeeded", phase=None, progress=1.0,
              epoch=BASELINE_EPOCHS, spec={"config": {}, "backbone": None, "validation_fraction": 0.2},
              summary=SUMMARY, time_limit_s=3600, attempts=1, created_at=started - timedelta(seconds=5),
              started_at=started, finished_at=now - timedelta(seconds=20))
    session.add(job)
    session.flush()
    steps = [("state", "queued", "running", "picked up by worker"), ("phase", None, "structural", ""),
             ("phase", "structural", "quantitative", "distance criterion met"),
             ("phase", "quantitative", "pruning", ""), ("phase", "pruning", "baseline", ""),
             ("phase", "baseline", "exporting", ""), ("state", "running", "succeeded", "")]
    for i, (fld, old, new, reason) in enumerate(steps):
        session.add(JobTransition(job_id=job.id, field=fld, from_value=old, to_value=new, reason=reason,
                                  at=started + timedelta(seconds=20 * i)))
    session.add_all(curve_points(job.id))

    files: dict[str, Path] = {}
    names = ["trained", "baseline", *(f"pruned-{round(s * 100)}" for s in SPARSITIES)]
    for i, name in enumerate(names):
        path = _artifact_file(scratch, name, seed=100 + i)
        storage_key = f"jobs/{job.id}/{name}.safetensors"
        storage.put_file(storage_key, path)
        files[name] = storage.local_path(storage_key)
        session.add(Artifact(job_id=job.id, name=name, storage_key=storage_key, sha256=sha256_file(path),
                             size_bytes=path.stat().st_size, meta={}))

    failed = Job(owner=owner, dataset_id=dataset.id, state="failed", phase="structural", progress=0.2,
                 epoch=3, spec={"config": {}}, summary={}, time_limit_s=3600, attempts=1,
                 failure_kind="gpu_oom",
                 failure_message="CUDA out of memory while allocating 2.00 GiB (hidden 65536 is too wide)",
                 created_at=now - timedelta(minutes=10), started_at=now - timedelta(minutes=9),
                 finished_at=now - timedelta(minutes=8))
    session.add(failed)
    session.flush()
    session.add(JobTransition(job_id=failed.id, field="state", from_value="running", to_value="failed",
                              reason=failed.failure_message, at=now - timedelta(minutes=8)))
    running = Job(owner=owner, dataset_id=dataset.id, state="running", phase="structural", progress=0.4,
                  epoch=4, spec={"config": {}}, summary={}, time_limit_s=3600, attempts=1,
                  created_at=now - timedelta(seconds=30), started_at=now - timedelta(seconds=25))
    session.add(running)
    session.flush()
    session.add_all(running_curve_points(running.id, range(4)))
    session.commit()
    return Seeded(key=key, owner=owner, job_id=job.id, failed_job_id=failed.id, running_job_id=running.id,
                  artifact_files=files)


def running_curve_points(job_id: str, steps: range) -> list[CurvePoint]:
    """Structural train/val loss of a job still running, one point per step (as the worker appends them)."""
    return [CurvePoint(job_id=job_id, series=series, phase="structural", step=step,
                       value=2.2 * 0.85 ** step + shift, wall_time=0.8 * (step + 1))
            for step in steps for series, shift in (("train_loss", 0.0), ("val_loss", 0.05))]
