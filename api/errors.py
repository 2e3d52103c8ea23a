"""One error shape for every 4xx/5xx: ``{"detail": "<sentence>", "field": "<where>" | null}``.

Routes and services raise ``ApiError``; validation errors from FastAPI/pydantic and plain HTTP errors are
rewritten into the same body so clients parse one format.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 'architecture', 'hidden', 0) -> 'architecture.hidden.0'; the request part is dropped."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(parts) or None


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(exc.detail, exc.field, **exc.extra), status_code=exc.status_code,
                        headers=exc.headers)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return JSONResponse(error_body(detail), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _loc_to_field(e.get("loc", ())), "message": e.get("msg", "invalid value")}
              for e in exc.errors()]
    first = errors[0] if errors else {"field": None, "message": "invalid request"}
    where = f"{first['field']}: " if first["field"] else ""
    return JSONResponse(error_body(f"{where}{first['message']}", first["field"], errors=errors),
                        status_code=422)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
