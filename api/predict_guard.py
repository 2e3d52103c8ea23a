"""Oversize prediction bodies get a 413 that names the field that made them too large.

``POST /v1/jobs/{id}/predict`` carries its data in one field (``rows`` or ``texts``), and a body past
``GLAI_MAX_REQUEST_BYTES`` is refused before it is parsed, so the general request guard cannot say which.
This middleware, for that path only, keeps what it has read (at most the limit, as FastAPI would anyway)
and, once the limit is passed, finds the top-level key whose value the cut falls in: the answer is
``{"detail": ..., "field": "rows"}``. A declared ``Content-Length`` past the limit reads only that much.
Everything else (content type, NUL bytes, bodies within the limit) is left to ``api.main.RequestGuard``.
"""

from __future__ import annotations

import json
import re

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_body

PREDICT_PATH = re.compile(r"^/v1/jobs/[^/]+/predict/?$")
# JSON's structural tokens, with strings as one token (an unterminated string runs to the end of the data).
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[{}\[\]:,]', re.DOTALL)


def field_at_cut(prefix: bytes) -> str | None:
    """The top-level key of the JSON object whose value is being read where ``prefix`` ends, or the last
    key seen; None when the data is no object or has no key yet."""
    depth, key, candidate, expecting_key = 0, None, None, False
    for match in _TOKEN.finditer(prefix):
        token = match.group()
        if token[:1] == b'"':
            if depth == 1 and expecting_key:
                candidate = token
            continue
        if token in (b"{", b"["):
            depth += 1
            expecting_key = depth == 1 and token == b"{"
        elif token in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and token == b":" and candidate is not None:
            try:
                key = str(json.loads(candidate))
            except ValueError:
                key = None
            candidate, expecting_key = None, False
        elif depth == 1 and token == b",":
            expecting_key = True
    return key


class PredictBodyTooLarge(ApiError, HTTPException):
    """Raised from ``receive`` (so FastAPI's body reader passes it on) and answered as an ``ApiError``."""

    def __init__(self, detail: str, field: str | None) -> None:
        HTTPException.__init__(self, 413, detail)
        self.field, self.extra = field, {}


def _detail(limit: int, field: str | None) -> str:
    where = f"`{field}` " if field else ""
    return (f"the prediction request is larger than {limit} bytes (GLAI_MAX_REQUEST_BYTES): send {where}in "
            "smaller batches")


class PredictBodyLimit:
    """See the module docstring. ``limit`` is the API's request limit (GLAI_MAX_REQUEST_BYTES)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not PREDICT_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            prefix = await self._read_prefix(receive)
            field = field_at_cut(prefix)
            await JSONResponse(error_body(_detail(self.limit, field), field), status_code=413)(
                scope, receive, send)
            return
        seen: list[bytes] = []
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                size += len(body)
                if size > self.limit:
                    seen.append(body[: max(0, self.limit - (size - len(body)))])
                    field = field_at_cut(b"".join(seen))
                    raise PredictBodyTooLarge(_detail(self.limit, field), field)
                seen.append(body)
            return message

        await self.app(scope, counted, send)

    async def _read_prefix(self, receive: Receive) -> bytes:
        """The first ``limit`` bytes of the body (or all of it, if the client sends less)."""
        parts, size = [], 0
        while size < self.limit:
            message = await receive()
            if message["type"] != "http.request":
                break
            body = message.get("body", b"")
            parts.append(body[: self.limit - size])
            size += len(body)
            if not message.get("more_body", False):
                break
        return b"".join(parts)
