"""POST /v1/jobs/{id}/predict: classify rows or texts with one of the job's models, on the server."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DbDep, OwnerDep, ServicesDep
from api.routes.common import errors
from api.schemas import PredictIn, PredictOut
from api.services import predictions

router = APIRouter(prefix="/jobs/{job_id}", tags=["results"])


@router.post("/predict", response_model=PredictOut, summary="Predict with one of the job's models",
             responses=errors(404, 410, 413, 422))
def predict(job_id: str, body: PredictIn, services: ServicesDep, db: DbDep, owner: OwnerDep) -> PredictOut:
    """The model (`trained` unless `artifact` names another) classifies each of `rows` (feature rows as
    uploaded) or `texts` (raw texts, for a model trained on the `minilm` backbone), as the downloaded
    model would with `glai predict`. Models stay loaded in the API process between requests (at most
    GLAI_PREDICT_CACHE_MODELS). Too many rows, too long a text or too large a body is a 413 naming the
    field; rows of the wrong width a 422 naming the row."""
    return predictions.predict(db, services, owner, job_id, body)
