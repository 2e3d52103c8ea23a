"""Predictions on the server: one of the caller's job models, from the per-process cache, on rows or texts.

The same ``glai_core.predict.Predictor`` the CLI and notebooks use answers, so a server prediction is the
one a downloaded model gives. Checks come before any model is touched and each names its field: one of
``rows``/``texts``, at most ``predict_max_rows`` of them, texts within ``predict_max_text_chars``, rows as
wide as the model's input, texts only for a text-backbone model. Nothing is stored.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import Services
from api.errors import ApiError
from api.schemas import PredictIn, PredictOut
from api.services import jobs
from glai_common.models import Artifact
from glai_core.artifacts import ArtifactError
from glai_core.predict import PredictionError, Predictor

MODEL_SUFFIX = ".safetensors"
CHUNK = 1024 * 1024
# One embedding at a time per process: the backbone's fast tokenizer refuses concurrent calls from several
# threads ("Already borrowed"), and the embedding uses every core anyway.
_EMBEDDING = threading.Lock()


def _model_artifact(db: Session, owner: str, job_id: str, name: str) -> Artifact:
    job = jobs.get_owned(db, owner, job_id)
    models = sorted(a.name for a in job.artifacts if a.storage_key.endswith(MODEL_SUFFIX))
    artifact = db.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if artifact is None:
        have = ", ".join(models) or f"none (the job is {job.state})"
        raise ApiError(404, f"job '{job_id}' has no model {name!r}; its models: {have}", "artifact")
    if not artifact.storage_key.endswith(MODEL_SUFFIX):
        raise ApiError(422, f"{name!r} is not a model but a {PurePosixPath(artifact.storage_key).suffix[1:]} "
                            f"file; predict with one of: {', '.join(models)}", "artifact")
    return artifact


def _check_inputs(body: PredictIn, max_rows: int, max_chars: int) -> str:
    """The field that holds the inputs (``rows`` or ``texts``), after the checks that need no model."""
    if body.rows is not None and body.texts is not None:
        raise ApiError(422, "send either `rows` (feature rows) or `texts` (raw texts), not both", "texts")
    if body.rows is None and body.texts is None:
        raise ApiError(422, "send `rows` (feature rows) or `texts` (raw texts) to predict", "rows")
    field = "rows" if body.rows is not None else "texts"
    items: list[Any] = body.rows if body.rows is not None else body.texts  # type: ignore[assignment]
    if len(items) > max_rows:
        raise ApiError(413, f"{len(items)} {field} in one request; at most {max_rows} "
                            "(GLAI_MAX_PREDICT_ROWS): send them in smaller batches", field)
    for index, text in enumerate(body.texts or []):
        if len(text) > max_chars:
            raise ApiError(413, f"text {index} has {len(text)} characters; at most {max_chars} "
                                "(GLAI_MAX_PREDICT_TEXT_CHARS)", f"texts.{index}")
    return field


def _load(services: Services, name: str, key: str, sha256: str) -> Predictor:
    """Copy the stored file to a temporary one (checking its sha256 on the way) and load it: every store
    streams a key, and the file is gone once the model is in memory."""
    storage = services.storage
    if not storage.exists(key):
        raise ApiError(410, f"the file of model '{name}' is missing from storage", "artifact")
    digest = hashlib.sha256()
    handle, path = tempfile.mkstemp(prefix="glai-predict-", suffix=MODEL_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as target, storage.open(key) as source:
            while block := source.read(CHUNK):
                digest.update(block)
                target.write(block)
        if digest.hexdigest() != sha256:
            raise ApiError(500, f"the stored file of model '{name}' does not match its sha256")
        try:
            return Predictor.load(path)
        except ArtifactError as exc:  # not a model this release can load (never unpickled)
            raise ApiError(422, f"artifact '{name}' cannot be loaded as a model: {exc}", "artifact") from exc
    finally:
        os.unlink(path)


def _rows(predictor: Predictor, rows: list[list[float]]) -> np.ndarray:
    width = predictor.in_features
    for index, row in enumerate(rows):
        if len(row) != width:
            raise ApiError(422, f"row {index} has {len(row)} numbers; this model takes {width} features per "
                                "row", f"rows.{index}")
    return np.asarray(rows, dtype=np.float32)


def _texts(predictor: Predictor, texts: list[str]) -> list[str]:
    backbone = (predictor.metadata.get("backbone") or {})
    modality = (backbone.get("preprocessing") or {}).get("modality")
    if predictor.backbone is None:
        raise ApiError(422, f"this model takes feature rows ({predictor.in_features} numbers each) as "
                            "`rows`; texts need a model trained with a text backbone (minilm)", "texts")
    if modality != "text":
        raise ApiError(422, f"this model was trained on {modality or 'non-text'} inputs with the "
                            f"{predictor.backbone} backbone: send their {predictor.in_features}-d embeddings "
                            "as `rows`, or predict from files with `glai predict`", "texts")
    return texts


def predict(db: Session, services: Services, owner: str, job_id: str, body: PredictIn) -> PredictOut:
    settings = services.settings
    artifact = _model_artifact(db, owner, job_id, body.artifact)
    field = _check_inputs(body, settings.predict_max_rows, settings.predict_max_text_chars)
    name, key, sha256, size = artifact.name, artifact.storage_key, artifact.sha256, artifact.size_bytes
    db.close()  # the model may take a while to load and run: hand the connection back first
    predictor: Predictor = services.model_cache.get((key, sha256), size,
                                                    lambda: _load(services, name, key, sha256))
    inputs: Any = _rows(predictor, body.rows) if field == "rows" else _texts(predictor, body.texts or [])
    try:
        if field == "texts":
            with _EMBEDDING:
                probabilities = predictor.predict_proba(inputs)
        else:
            probabilities = predictor.predict_proba(inputs)
    except PredictionError as exc:
        raise ApiError(422, str(exc), field) from exc
    names = predictor.class_names
    return PredictOut(artifact=name, sha256=sha256, class_names=names,
                      classes=[names[int(k)] for k in probabilities.argmax(axis=1)],
                      probabilities=probabilities.astype(float).tolist())
