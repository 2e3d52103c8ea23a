"""Unknown query parameters are a 422 naming them, so a misspelt filter (``?dataset=``, ``?stat=``) is not
silently ignored and answered with every row.

The parameters an operation takes are read from its endpoint's signature: those declared with
``Annotated[..., Query(...)]``, as every route here declares them (a query parameter declared inside a
sub-dependency would not be seen). Read once per endpoint.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import anyio
from fastapi import Request
from fastapi.params import Query

from api.deps import BearerDep, ServicesDep, current_owner
from api.errors import ApiError

log = logging.getLogger("glai.api")


@lru_cache(maxsize=256)
def query_names(endpoint: Callable[..., Any]) -> frozenset[str] | None:
    """The query parameter names (aliases where given) of an endpoint; None when its annotations cannot
    be resolved (then nothing is refused: a valid request must never be)."""
    try:
        hints = typing.get_type_hints(endpoint, include_extras=True)
    except Exception:  # any failure to resolve means "unknown", never a 500
        log.warning("cannot read the query parameters of %s; not checking them", endpoint.__qualname__)
        return None
    names = set()
    for name, parameter in inspect.signature(endpoint).parameters.items():
        metadata = getattr(hints.get(name), "__metadata__", ())
        for declared in (*metadata, parameter.default):
            if isinstance(declared, Query):
                names.add(declared.alias or name)
    return frozenset(names)


async def known_query(request: Request, services: ServicesDep, credentials: BearerDep) -> None:
    """Refuse a query parameter the operation does not take. The key is checked first (a 401 before the
    422), but only where there is something to refuse: every operation authenticates its own request, so a
    request without unknown parameters (a status poll) pays for no second key lookup and no thread."""
    route = request.scope.get("route")
    endpoint = getattr(route, "endpoint", None)
    if endpoint is None or not request.query_params:
        return
    allowed = query_names(endpoint)
    if allowed is None:
        return
    unknown = [key for key in dict.fromkeys(request.query_params.keys()) if key not in allowed]
    if unknown:
        await anyio.to_thread.run_sync(current_owner, request, services, credentials)  # 401 / 429 first
        takes = f"it takes: {', '.join(sorted(allowed))}" if allowed else "it takes none"
        raise ApiError(422, f"unknown query parameter {unknown[0][:64]!r} for {request.method} "
                            f"{request.url.path[:200]}; {takes}", unknown[0][:64])
