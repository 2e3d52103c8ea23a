"""The methods a path answers, for the ``Allow`` header of a 405.

Each FastAPI route holds one path and its own methods, so Starlette's 405 names only the methods of the
first route whose path matched (``Allow: POST`` for ``/v1/jobs``, which also answers GET). RFC 9110 asks
for the full set. Each standard method is tried against the routes as the router itself would (their
public ``matches``), so nested routers count like plain routes; mounted apps decide their own methods.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """The methods in ``METHODS`` that some route answers on ``scope``'s path, in that order."""
    candidates = [route for route in routes if not isinstance(route, Mount)]
    return [method for method in METHODS
            if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in candidates)]
