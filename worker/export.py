"""The ``exporting`` phase: every model of a finished pipeline becomes one ``.safetensors`` artifact, an
ONNX copy of it (``<name>.onnx``, checked against PyTorch with onnxruntime on held-out rows) and the job
gets a ``config.json`` artifact with every setting it ran with (``worker.job_config``).

Files are written to a temporary directory and moved into storage atomically, then recorded in the
``artifacts`` table with their sha256 and size. A resumed job that dies mid-export simply rewrites the
same keys and updates the same rows (unique on job and name).

An ONNX copy is a convenience next to the model itself: when it cannot be made (a model past protobuf's
2 GiB, an exporter error) the job still succeeds with its safetensors models and the log says why. A copy
whose check fails is still stored, its ``meta.check.passed`` false, and the log says by how much.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from glai_common.models import Artifact
from glai_common.storage import sha256_file
from worker.context import WorkerContext

EXPORTING = "exporting"
CONFIG_ARTIFACT = "config.json"
ONNX_MAX_BYTES = 2**31 - 64 * 2**20  # one protobuf message; the graph around the weights needs some room


def pruned_name(sparsity: float) -> str:
    return f"pruned-{round(float(sparsity) * 100)}"


def onnx_name(model_name: str) -> str:
    return f"{model_name}.onnx"


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


def heldout_rows(data: Any, validation_fraction: float, seed: int, limit: int = 512) -> np.ndarray:
    """Up to ``limit`` rows the models never trained on, as the pipeline split them: the dataset's own
    validation rows, else the same stratified, seeded hold-out (``glai_core.data.split_indices``)."""
    from glai_core.data import split_indices

    if data.x_val is not None:
        rows = np.asarray(data.x_val[:limit])
    else:
        _, val_index = split_indices(data.y, len(data.class_names), validation_fraction, seed)
        rows = np.asarray(data.x[np.sort(val_index)[:limit]])
    return np.ascontiguousarray(rows.reshape(rows.shape[0], -1), dtype=np.float32)


def _row(name: str, key: str, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "storage_key": key, "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
            "meta": meta}


def _onnx_copy(tmp: Path, job_id: str, name: str, model: Any, standardizer: Any, metadata: dict[str, Any],
               heldout: np.ndarray | None, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Export one model as ONNX and check it; the artifact row, or None (logged) when it cannot be made."""
    from glai_core.onnx_export import INPUT, OPSET, OUTPUTS, check_onnx, export_onnx

    size = sum(t.numel() * 4 for t in model.state_dict().values())
    if size > ONNX_MAX_BYTES:
        log(f"[exporting] no ONNX copy of {name}: its {size:,} bytes of weights exceed one ONNX file")
        return None
    path = tmp / onnx_name(name)
    try:
        export_onnx(path, model, standardizer, metadata)
    except Exception as exc:  # noqa: BLE001 - the safetensors model is the product; this is a copy
        log(f"[exporting] no ONNX copy of {name}: {type(exc).__name__}: {exc}")
        return None
    check = None
    if heldout is not None and heldout.shape[0]:
        result = check_onnx(path, model, standardizer, heldout)
        check = result.to_dict()
        verdict = "matches" if result.passed else "DOES NOT match"
        log(f"[exporting] {onnx_name(name)}: onnxruntime {verdict} PyTorch on {result.rows} held-out rows "
            f"(max |probability difference| {result.max_abs_diff_probabilities:.2e}, tolerance "
            f"{result.tolerance:g})")
    meta = {"format": "onnx", "model": name, "opset": OPSET, "input": INPUT, "outputs": list(OUTPUTS),
            "check": check}
    return _row(onnx_name(name), f"jobs/{job_id}/{onnx_name(name)}", path, meta)


def export_result(ctx: WorkerContext, job_id: str, result: Any, class_names: list[str],
                  preprocessing: dict[str, Any], *, heldout: np.ndarray | None = None,
                  job_config: dict[str, Any] | None = None,
                  log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Save every model (and its ONNX copy when ``GLAI_EXPORT_ONNX``), the job's config, and record them;
    returns one row description per artifact."""
    from glai_core.artifacts import _jsonable, save_model

    log = log or (lambda _line: None)
    backbone = {"name": preprocessing["backbone"], "preprocessing": preprocessing} if preprocessing else None
    written: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"glai-export-{job_id}-") as tmp_dir:
        tmp = Path(tmp_dir)
        for name, model, extra in models_to_export(result):
            path = tmp / f"{name}.safetensors"
            metadata = {"name": name, **extra, "job_id": job_id, "class_names": list(class_names),
                        "backbone": backbone, "summary": result.summary}
            save_model(path, model.cpu(), metadata, standardizer=result.standardizer)
            written.append(_row(name, f"jobs/{job_id}/{name}.safetensors", path, extra))
            if ctx.settings.export_onnx:
                onnx_meta = {key: value for key, value in metadata.items() if key != "summary"}
                row = _onnx_copy(tmp, job_id, name, model, result.standardizer, onnx_meta, heldout, log)
                if row is not None:
                    written.append(row)
        if job_config is not None:
            path = tmp / CONFIG_ARTIFACT
            text = json.dumps(_jsonable(job_config), indent=2, sort_keys=True, allow_nan=False)
            path.write_text(text + "\n")
            written.append(_row(CONFIG_ARTIFACT, f"jobs/{job_id}/{CONFIG_ARTIFACT}", path,
                                {"format": "json", "role": "job-config"}))
        for row in written:
            # the digest already computed: object storage records it instead of reading the file again
            ctx.storage.put_file(row["storage_key"], tmp / Path(row["storage_key"]).name,
                                 sha256=row["sha256"])
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
