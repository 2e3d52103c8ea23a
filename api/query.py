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

from fastapi import Request
from fastapi.params import Query

from api.deps import OwnerDep
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


def known_query(request: Request, _owner: OwnerDep) -> None:
    """Refuse a query parameter the operation does not take (after auth: a 401 comes first)."""
    route = request.scope.get("route")
    endpoint = getattr(route, "endpoint", None)
    if endpoint is None:
        return
    allowed = query_names(endpoint)
    if allowed is None:
        return
    unknown = [key for key in dict.fromkeys(request.query_params.keys()) if key not in allowed]
    if unknown:
        takes = f"it takes: {', '.join(sorted(allowed))}" if allowed else "it takes none"
        raise ApiError(422, f"unknown query parameter {unknown[0][:64]!r} for {request.method} "
                            f"{request.url.path[:200]}; {takes}", unknown[0][:64])
