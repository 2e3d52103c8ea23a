"""The FastAPI application: ``create_app(settings)`` for tests and embedding, ``app`` for uvicorn.

``app`` is built lazily on first access (``uvicorn api.main:app``), so importing this module creates no
engine and no directories.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.admission import AdmissionLimit
from api.auth_limit import FailedAuthLimiter
from api.deps import Services
from api.docs import install_docs
from api.errors import error_body, install_error_handlers
from api.metrics import RequestTimer, make_registry
from api.metrics import router as metrics_router
from api.openapi import install_openapi
from api.predict_guard import PredictBodyLimit
from api.query import known_query
from api.routes import datasets, health, jobs, models, predict, results, webhooks
from glai_common.db import make_engine, make_read_engine
from glai_common.settings import Settings, get_settings
from glai_common.storage import make_storage

API_VERSION = "v1"
DESCRIPTION = """Train GLAI (GreenLightningAI) blocks as a service.

Upload a dataset, submit a job, watch its phases and curves, download the exported models.
Every request needs `Authorization: Bearer <API key>` (unless the server runs with auth disabled).
Errors always have the body `{"detail": "...", "field": "..." | null}`.
"""


class BodyTooLarge(HTTPException):
    """Raised from inside ``receive`` so FastAPI's body reader re-raises it instead of calling it a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes (GLAI_MAX_REQUEST_BYTES)")


class RequestGuard:
    """Cheap checks before any route runs.

    * JSON bodies above ``limit`` bytes get a 413: at once when Content-Length says so, otherwise (chunked
      transfer, or a lying length) the moment the bytes read pass the limit, so nothing larger is buffered.
    * A NUL byte in the path or query string gets a 400: no id, key or name ever contains one, and
      PostgreSQL refuses them in text, so they would otherwise surface as 500s deep in a query.
    * A body that is not JSON (declared by its Content-Type) gets a 415 instead of a confusing 422.

    Uploads (``exempt``) are streamed and limited by their own parser.
    """

    def __init__(self, app: ASGIApp, limit: int, exempt: Callable[[Scope], bool]) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
        target = raw_path + b"?" + scope.get("query_string", b"")
        if b"\x00" in target or b"%00" in target or "\x00" in scope.get("path", ""):
            await _reject(scope, receive, send, 400, "NUL characters are not allowed in the URL")
            return
        if self.exempt(scope):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        has_body = (length.isdigit() and int(length) > 0) or b"transfer-encoding" in headers
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if has_body and media and media != b"application/json" and not media.endswith(b"+json"):
            await _reject(scope, receive, send, 415,
                          f"send the request body as application/json (got {media.decode('latin-1')[:80]})")
            return
        if length.isdigit() and int(length) > self.limit:
            await _reject(scope, receive, send, 413,
                          f"request body exceeds {self.limit} bytes (GLAI_MAX_REQUEST_BYTES)")
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


async def _reject(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse(error_body(detail), status_code=status)(scope, receive, send)


def _is_upload(scope: Scope) -> bool:
    return scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == f"/{API_VERSION}/datasets"


def default_enqueue(job_id: str) -> None:
    """The plain pool and normal priority; ``create_app`` routes each job by its row instead."""
    from glai_common.queue import enqueue_job

    enqueue_job(job_id)


def create_app(settings: Settings | None = None, enqueue: Callable[[str], None] | None = None) -> FastAPI:
    """Build the app. ``enqueue`` defaults to ``glai_common.queue.enqueue_job`` (global settings' broker),
    sending each job to its pool and priority (``routed_enqueue``)."""
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url, settings)
    from sqlalchemy.orm import sessionmaker

    from glai_common.queue import routed_enqueue

    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    read_engine = make_read_engine(settings.resolved_database_url, settings)
    services = Services(settings=settings, engine=engine, sessions=sessions, read_engine=read_engine,
                        storage=make_storage(settings),
                        enqueue=enqueue or routed_enqueue(sessions),
                        auth_failures=FailedAuthLimiter(settings.auth_failure_limit,
                                                        settings.auth_failure_window_s))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Never more request threads than pooled connections: each thread holds at most one, so a
        # thread waiting for a connection always waits on one that is being used, never on a stuck one.
        limiter = anyio.to_thread.current_default_thread_limiter()
        connections = settings.db_pool_size + settings.db_max_overflow
        limiter.total_tokens = max(1, min(limiter.total_tokens, connections))
        # Everything imported so far lives as long as the process: keep it out of the collector's scans,
        # which otherwise walk every module object in each full collection (a pause of tens of ms).
        gc.collect()
        gc.freeze()
        yield
        engine.dispose()
        read_engine.dispose()

    app = FastAPI(title="GLAI training service", version="1.0.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # api.docs serves both without a CDN
                  openapi_tags=[
                      {"name": "datasets", "description": "Upload and manage training data."},
                      {"name": "jobs", "description": "Submit, watch, cancel and delete training jobs."},
                      {"name": "results", "description": "Curves, logs and exported models of a job."},
                      {"name": "webhooks", "description": "The key job notifications are signed with."},
                      {"name": "health", "description": "Probes for orchestrators."}])
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(RequestGuard, limit=settings.max_request_bytes, exempt=_is_upload)
    app.add_middleware(PredictBodyLimit, limit=settings.max_request_bytes)  # outer: names the field
    app.add_middleware(AdmissionLimit, limit=settings.db_pool_size + settings.db_max_overflow,
                       wait_s=settings.api_queue_timeout_s)
    registry, latency = make_registry(sessions, settings)
    app.state.metrics_registry = registry
    # outermost: admission waits count as latency
    app.add_middleware(RequestTimer, histogram=latency)
    # every /v1 operation refuses unknown query parameters
    for module in (datasets, jobs, results, predict, webhooks, models):
        app.include_router(module.router, prefix=f"/{API_VERSION}", dependencies=[Depends(known_query)])
    app.include_router(health.router)
    app.include_router(metrics_router)
    _mount_dashboard(app)
    install_openapi(app)
    install_docs(app)
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
