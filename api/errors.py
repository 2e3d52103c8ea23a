"""One error shape for every 4xx/5xx: ``{"detail": "<sentence>", "field": "<where>" | null}``.

Routes and services raise ``ApiError``; validation errors from FastAPI/pydantic and plain HTTP errors are
rewritten into the same body so clients parse one format.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from api.methods import allowed_methods
from glai_common.storage import StorageUnavailable

log = logging.getLogger("glai.api")


class ApiError(Exception):
    """An expected failure with the HTTP status, a clear sentence and, when one is to blame, the field."""

    def __init__(self, status_code: int, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status_code, self.detail, self.field = status_code, detail, field
        self.headers, self.extra = headers, extra or {}


def not_found(what: str, ident: str, field: str | None = None) -> ApiError:
    return ApiError(404, f"{what} '{ident}' not found", field)


def error_body(detail: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "field": field, **extra}


_UNION_TAGS = {"float", "int", "str", "bool", "none", "list", "dict"}


def _is_union_tag(part: str) -> bool:
    """Pydantic names a union branch by its type: `float`, `literal['auto']`, `constrained-int`..."""
    return part in _UNION_TAGS or part.startswith("constrained-") or "[" in part or "(" in part


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 'architecture', 'hidden', 0) -> 'architecture.hidden.0'; the request part is dropped, and
    so are pydantic's union-branch tags, which name no field of the API."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    parts = [p for p in parts if not _is_union_tag(p)]
    return ".".join(parts) or None


def _first_problem(errors: list[dict[str, Any]]) -> tuple[str | None, str]:
    """The first field and what is wrong with it; a union's branches each report the same field, so their
    messages are joined ("Input should be a valid integer or Input should be 'auto'")."""
    field = errors[0]["field"]
    messages = list(dict.fromkeys(e["message"] for e in errors if e["field"] == field))
    return field, " or ".join(messages)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(exc.detail, exc.field, **exc.extra), status_code=exc.status_code,
                        headers=exc.headers)


_REWORDED = {  # FastAPI's own messages, said so that the client knows what to fix
    "There was an error parsing the body": "the request body is not valid JSON (is it UTF-8 text?)",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    detail = _REWORDED.get(detail, detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # any method this path lacks, TRACE and unknown ones included
        allowed = allowed_methods(request.app.router.routes, request.scope)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
            detail = (f"{request.method[:32]} is not allowed on {request.url.path[:200]}; "
                      f"use {' or '.join(allowed)}")
    return JSONResponse(error_body(detail), status_code=exc.status_code, headers=headers or None)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    broken = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
    if broken is not None:  # not a field's fault: the body is not JSON at all
        reason = (broken.get("ctx") or {}).get("error", "")
        where = broken.get("loc", ("body", None))[-1]
        return JSONResponse(error_body(f"the request body is not valid JSON ({reason} at character {where})"
                                       if reason else "the request body is not valid JSON"), status_code=400)
    errors = [{"field": _loc_to_field(e.get("loc", ())),
               "message": str(e.get("msg", "invalid value")).removeprefix("Value error, ")}
              for e in exc.errors()]
    field, message = _first_problem(errors) if errors else (None, "invalid request")
    where = f"{field}: " if field else ""
    return JSONResponse(error_body(f"{where}{message}", field, errors=errors), status_code=422)


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """Pool exhausted or database unreachable: a fast, retryable 503 instead of a hang or a 500."""
    log.warning("database unavailable: %s", exc)
    return JSONResponse(error_body("the database is busy or unreachable; retry shortly"), status_code=503,
                        headers={"Retry-After": "1"})


async def _storage_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """The object store did not answer (GLAI_STORAGE_URL): retryable, and nothing was half-stored (an
    upload's row is committed only after its files are)."""
    log.warning("object storage unavailable: %s", exc)
    return JSONResponse(error_body("the artifact storage is unreachable; retry shortly"), status_code=503,
                        headers={"Retry-After": "5"})


async def _client_disconnected(request: Request, _exc: Exception) -> JSONResponse:
    """The client went away before its request body was read (a cancelled upload, a dropped link): its
    own doing, nothing failed here, and the route has already removed what it had received. Logged as
    what it is; the response goes nowhere, but the app must still finish the request with one."""
    log.info("client disconnected during %s %s before the request body was complete; nothing was stored",
             request.method, request.url.path)
    return JSONResponse(error_body("the client disconnected before the request was complete"),
                        status_code=400)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    for db_error in (sqlalchemy.exc.TimeoutError, sqlalchemy.exc.OperationalError,
                     sqlalchemy.exc.InterfaceError):
        app.add_exception_handler(db_error, _database_unavailable)
    app.add_exception_handler(StorageUnavailable, _storage_unavailable)
    app.add_exception_handler(Exception, _unexpected)
