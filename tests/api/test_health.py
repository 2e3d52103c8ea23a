"""Liveness always answers; readiness reports the database and the broker."""

from __future__ import annotations

import socket
from collections.abc import Callable

from tests.api.helpers import Api


def test_readyz_ok_with_reachable_broker(api: Api) -> None:
    response = api.client.get("/readyz")  # memory:// broker in these tests
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_503_when_broker_is_down(make_api: Callable[..., Api]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = make_api(broker_url=f"redis://127.0.0.1:{port}/0")
    response = api.client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("unreachable")
    assert api.client.get("/healthz").status_code == 200
