"""/v1/webhooks: the key your job notifications are signed with."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DbDep, OwnerDep
from api.routes.common import errors
from api.schemas import WebhookSecretOut
from glai_common import webhooks

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.get("/secret", response_model=WebhookSecretOut, summary="Your webhook signing secret",
            responses=errors())
def get_secret(db: DbDep, owner: OwnerDep) -> WebhookSecretOut:
    """Made on first use (this call, or the first job with `notify`), then the same until rotated."""
    return WebhookSecretOut.model_validate(webhooks.secret_for(db, owner))


@router.post("/secret/rotate", response_model=WebhookSecretOut, summary="Replace your webhook secret",
             responses=errors())
def rotate_secret(db: DbDep, owner: OwnerDep) -> WebhookSecretOut:
    """Every delivery attempt from now on, retries of older ones included, is signed with the new key."""
    return WebhookSecretOut.model_validate(webhooks.rotate_secret(db, owner))
