"""Cut the network off in a test's child processes (API, worker): any socket connection to an address
that is not loopback (or a Unix socket) raises ``OSError`` before a packet leaves. Put this directory
first on PYTHONPATH and set GLAI_TEST_NO_NETWORK=1. Self-contained: it runs before ``sys.path`` holds
the repository. The test process itself uses the same ``guarded`` wrapper."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

MESSAGE = "network access is disabled in this test (only loopback is allowed)"


def allowed(address: Any) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX path
        return True
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # any other host name would need the network to resolve and reach


def guarded(original: Callable[..., Any]) -> Callable[..., Any]:
    def connect(self: socket.socket, address: Any, *args: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not allowed(address):
            raise OSError(f"{MESSAGE}: refused {address!r}")
        return original(self, address, *args)

    return connect


def install() -> None:
    socket.socket.connect = guarded(socket.socket.connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded(socket.socket.connect_ex)  # type: ignore[method-assign]


if os.environ.get("GLAI_TEST_NO_NETWORK") == "1":
    install()
