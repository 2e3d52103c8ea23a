"""Request dependencies: the app's services, one database session per request, the caller's owner."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.auth_limit import FailedAuthLimiter, client_key
from api.errors import ApiError
from api.services import api_keys
from api.services.model_cache import ModelCache
from glai_common.settings import Settings
from glai_common.storage import Storage

LOCAL_OWNER = "local"  # the owner of every row when auth is disabled


@dataclass
class Services:
    """Everything a request may need, built once in ``create_app`` (tests build their own)."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    enqueue: Callable[[str], None]
    auth_failures: FailedAuthLimiter = field(default_factory=lambda: FailedAuthLimiter(0, 1.0))
    # Loaded models for POST /v1/jobs/{id}/predict; None: bounded by the settings (predict_cache_*).
    model_cache: ModelCache[Any] = None  # type: ignore[assignment]
    # Status polls (glai_common.db.make_read_engine); None: the ordinary engine.
    read_engine: Engine | None = None

    def __post_init__(self) -> None:
        if self.read_engine is None:
            self.read_engine = self.engine
        if self.model_cache is None:
            settings = self.settings
            self.model_cache = ModelCache(settings.predict_cache_models, settings.predict_cache_bytes)


async def get_services(request: Request) -> Services:
    """Async on purpose: a sync dependency costs every request a hop to a worker thread."""
    return request.app.state.services  # type: ignore[no-any-return]


async def get_db(services: Annotated[Services, Depends(get_services)]) -> AsyncIterator[Session]:
    """One session per request. Services commit their own unit of work; close() rolls back the rest.

    Async on purpose: creating a session does no I/O, and closing it here runs on the event loop the
    moment the response is ready, instead of queueing for a worker thread while holding a pooled
    connection (under load that queue is what exhausts the pool).
    """
    session = services.sessions()
    try:
        yield session
    finally:
        session.close()


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer glai_...`.")


def _is_local(request: Request) -> bool:
    """A loopback peer, or one that is no IP at all (a Unix socket, the test client)."""
    host = request.client.host if request.client else None
    try:
        return host is None or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def current_owner(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The owner every query is scoped to. Missing, unknown or revoked keys get the same 401.

    With auth disabled only local peers are served: ``glai serve`` already refuses a public address
    then, and this keeps a hand-started ``uvicorn --host 0.0.0.0`` from handing everything to anyone.
    """
    if not services.settings.auth_enabled:
        return local_owner(request)
    key = presented_key(request, services, credentials)
    # A short session of its own: the connection goes back to the pool before the endpoint runs.
    with services.sessions() as auth_session:
        owner = api_keys.owner_for_key(auth_session, key)
    if owner is None:
        refuse_key(request, services)
    return owner


def local_owner(request: Request) -> str:
    """Auth disabled: the one local owner, for local peers only."""
    if not _is_local(request):
        raise ApiError(401, "this server runs without API keys (GLAI_AUTH_ENABLED=false) and so only "
                            "answers local connections", headers={"WWW-Authenticate": "Bearer"})
    return LOCAL_OWNER


def presented_key(request: Request, services: Services,
                  credentials: HTTPAuthorizationCredentials | None) -> str:
    """The bearer key, once the address is not locked out for failed attempts; 401 when there is none."""
    wait_s = services.auth_failures.retry_after(_client(request))
    if wait_s:  # whatever the key: a right one answered differently would let the guessing go on
        raise ApiError(429, f"too many failed API-key attempts from this address; retry in {wait_s} s "
                            "(GLAI_AUTH_FAILURE_LIMIT)", "Authorization",
                       headers={"Retry-After": str(wait_s)})
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    return credentials.credentials


def refuse_key(request: Request, services: Services) -> NoReturn:
    """A key that is unknown, malformed or revoked: one more failed attempt, and the same 401 for all."""
    services.auth_failures.record_failure(_client(request))
    raise ApiError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})


def _client(request: Request) -> str:
    return client_key(request.client.host if request.client else None)


ServicesDep = Annotated[Services, Depends(get_services)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
DbDep = Annotated[Session, Depends(get_db)]
OwnerDep = Annotated[str, Depends(current_owner)]
