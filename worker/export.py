"""The ``exporting`` phase: every model of a finished pipeline becomes one ``.safetensors`` artifact.

Files are written to a temporary directory and moved into storage atomically, then recorded in the
``artifacts`` table with their sha256 and size. A resumed job that dies mid-export simply rewrites the
same keys and updates the same rows (unique on job and name).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from glai_common.models import Artifact
from glai_common.storage import sha256_file
from worker.context import WorkerContext

EXPORTING = "exporting"


def pruned_name(sparsity: float) -> str:
    return f"pruned-{round(float(sparsity) * 100)}"


def models_to_export(result: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """(artifact name, model, extra metadata) for the trained block, each pruned block and the baseline."""
    models: list[tuple[str, Any, dict[str, Any]]] = [("trained", result.glai, {"role": "glai"})]
    for pruned in result.pruned:
        models.append((pruned_name(pruned.sparsity), pruned.model,
                       {"role": "glai-pruned", "sparsity": float(pruned.sparsity),
                        "accuracy": float(pruned.accuracy),
                        "accuracy_before_finetune": float(pruned.accuracy_before_finetune),
                        "trainable_params": int(pruned.trainable_params)}))
    if result.baseline is not None:
        models.append(("baseline", result.baseline, {"role": "mlp-baseline"}))
    return models


def export_result(ctx: WorkerContext, job_id: str, result: Any, class_names: list[str],
                  preprocessing: dict[str, Any]) -> list[dict[str, Any]]:
    """Save every model and record it; returns one row description per artifact."""
    from glai_core.artifacts import save_model

    backbone = {"name": preprocessing["backbone"], "preprocessing": preprocessing} if preprocessing else None
    written: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"glai-export-{job_id}-") as tmp:
        for name, model, extra in models_to_export(result):
            path = Path(tmp) / f"{name}.safetensors"
            metadata = {"name": name, **extra, "job_id": job_id, "class_names": list(class_names),
                        "backbone": backbone, "summary": result.summary}
            save_model(path, model.cpu(), metadata, standardizer=result.standardizer)
            key = f"jobs/{job_id}/{name}.safetensors"
            written.append({"name": name, "storage_key": key, "sha256": sha256_file(path),
                            "size_bytes": path.stat().st_size, "meta": extra})
            ctx.storage.put_file(key, path)
    with ctx.session() as session:
        for row in written:
            artifact = session.scalar(select(Artifact).where(Artifact.job_id == job_id,
                                                             Artifact.name == row["name"]))
            if artifact is None:
                session.add(Artifact(job_id=job_id, **row))
            else:
                for field, value in row.items():
                    setattr(artifact, field, value)
    return written
