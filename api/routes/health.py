"""Liveness and readiness probes (no auth: they reveal nothing but up/down)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ServicesDep
from api.schemas import Health
from api.services import health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Readiness: database, broker, S3 reachable",
            responses={503: {"model": Health, "description": "A dependency is unreachable."}})
def readyz(services: ServicesDep) -> JSONResponse:
    checks = {"database": health.check_database(services.engine),
              "broker": health.check_broker(services.settings.resolved_broker_url)}
    if services.settings.storage_url:  # a bucket on the network; local storage is this machine's disk
        checks["storage"] = health.check_storage(services.storage)
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
