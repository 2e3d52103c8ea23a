"""Behind a reverse proxy the failed-auth limit must count each real client, not the proxy: uvicorn's
proxy headers (trusted from ``--forwarded-allow-ips``, compose's GLAI_FORWARDED_ALLOW_IPS) give the app the
address in ``X-Forwarded-For``. Over a real socket, with uvicorn as compose runs it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx

from tests.api.helpers import Api
from tests.uvicorn_thread import serve_in_thread

WRONG = {"Authorization": "Bearer glai_" + "x" * 43}


def _serve(api: Api, forwarded_allow_ips: str) -> AbstractContextManager[str]:
    return serve_in_thread(api.client.app, lifespan="off", proxy_headers=True,
                           forwarded_allow_ips=forwarded_allow_ips)


def _as(client: str) -> dict[str, str]:
    return {**WRONG, "X-Forwarded-For": client}


def test_a_trusted_proxys_clients_are_limited_one_by_one(make_api: Callable[..., Api]) -> None:
    api = make_api(auth_failure_limit=3, auth_failure_window_s=60)
    with _serve(api, "127.0.0.1") as url, httpx.Client(base_url=url) as http:  # the proxy is on loopback
        statuses = [http.get("/v1/jobs", headers=_as("203.0.113.5")).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        assert http.get("/v1/jobs", headers=_as("203.0.113.6")).status_code == 401  # another client
        right = {**api.headers, "X-Forwarded-For": "203.0.113.6"}
        assert http.get("/v1/jobs", headers=right).status_code == 200


def test_an_untrusted_peer_cannot_pick_its_address(make_api: Callable[..., Api]) -> None:
    """Without trust the header is ignored: a client cannot dodge the limit by inventing addresses."""
    api = make_api(auth_failure_limit=3, auth_failure_window_s=60)
    with _serve(api, "") as url, httpx.Client(base_url=url) as http:
        statuses = [http.get("/v1/jobs", headers=_as(f"203.0.113.{i}")).status_code for i in range(4)]
        assert statuses == [401, 401, 401, 429]
