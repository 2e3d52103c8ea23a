"""Admission control: at most as many API requests in flight as there are pooled connections.

A sync FastAPI route hops between worker threads (dependencies, the endpoint, response validation)
while its session may hold a connection. Without a bound, requests holding connections can wait for
threads while every thread waits for a connection: the pool times out and the API stalls under load.
Admitting no more requests than connections breaks that cycle; the rest wait here, cheaply, on the
event loop, and get a fast 503 with Retry-After if the wait grows too long.
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_body


class AdmissionLimit:
    def __init__(self, app: ASGIApp, limit: int, wait_s: float, prefix: str = "/v1/") -> None:
        self.app, self.limit, self.wait_s, self.prefix = app, limit, wait_s, prefix
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        if self._slots is None:  # created on the server's event loop
            self._slots = asyncio.Semaphore(self.limit)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_s)
        except TimeoutError:
            response = JSONResponse(error_body("the server is at capacity; retry shortly"), status_code=503,
                                    headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()
