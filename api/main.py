"""The FastAPI application: ``create_app(settings)`` for tests and embedding, ``app`` for uvicorn.

``app`` is built lazily on first access (``uvicorn api.main:app``), so importing this module creates no
engine and no directories.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import Services
from api.errors import error_body, install_error_handlers
from api.routes import datasets, health, jobs, results
from glai_common.db import make_engine
from glai_common.settings import Settings, get_settings
from glai_common.storage import LocalStorage

API_VERSION = "v1"
DESCRIPTION = """Train GLAI (GreenLightningAI) blocks as a service.

Upload a dataset, submit a job, watch its phases and curves, download the exported models.
Every request needs `Authorization: Bearer <API key>` (unless the server runs with auth disabled).
Errors always have the body `{"detail": "...", "field": "..." | null}`.
"""


class RequestSizeLimit:
    """Refuse JSON bodies above ``limit`` bytes early (uploads have their own, larger limit)."""

    def __init__(self, app: ASGIApp, limit: int, exempt: Callable[[Scope], bool]) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.exempt(scope):
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.limit:
                from fastapi.responses import JSONResponse

                body = error_body(f"request body exceeds {self.limit} bytes (GLAI_MAX_REQUEST_BYTES)")
                await JSONResponse(body, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_upload(scope: Scope) -> bool:
    return scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == f"/{API_VERSION}/datasets"


def default_enqueue(job_id: str) -> None:
    from glai_common.queue import enqueue_job

    enqueue_job(job_id)


def create_app(settings: Settings | None = None, enqueue: Callable[[str], None] | None = None) -> FastAPI:
    """Build the app. ``enqueue`` defaults to ``glai_common.queue.enqueue_job`` (global settings' broker)."""
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url)
    from sqlalchemy.orm import sessionmaker

    services = Services(settings=settings, engine=engine,
                        sessions=sessionmaker(bind=engine, expire_on_commit=False),
                        storage=LocalStorage(settings.resolved_storage_dir),
                        enqueue=enqueue or default_enqueue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(title="GLAI training service", version="1.0.0", description=DESCRIPTION, lifespan=lifespan,
                  openapi_tags=[
                      {"name": "datasets", "description": "Upload and manage training data."},
                      {"name": "jobs", "description": "Submit, watch, cancel and delete training jobs."},
                      {"name": "results", "description": "Curves, logs and exported models of a job."},
                      {"name": "health", "description": "Probes for orchestrators."}])
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(RequestSizeLimit, limit=settings.max_request_bytes, exempt=_is_upload)
    for module in (datasets, jobs, results):
        app.include_router(module.router, prefix=f"/{API_VERSION}")
    app.include_router(health.router)
    _mount_dashboard(app)
    return app


def _mount_dashboard(app: FastAPI) -> None:
    try:
        from api.dashboard import mount_dashboard
    except ModuleNotFoundError as exc:  # the dashboard package is optional; its own errors are not
        if exc.name != "api.dashboard":
            raise
        logging.getLogger("glai.api").info("dashboard not installed")
        return
    mount_dashboard(app)


def __getattr__(name: str) -> Any:
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
