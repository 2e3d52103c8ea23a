"""A client that goes away mid-upload is a client disconnect in the log, not an unhandled error."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from tests.api.helpers import Api, npz_bytes


def _send_half_an_upload(url: str, key: str) -> None:
    """Headers announcing a large multipart body, a first chunk of it, then the connection closes."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "XyZb0undary"
    start = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.npz\"\r\n\r\n"
             ).encode() + npz_bytes()[:2000]
    head = (f"POST /v1/datasets HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 150000\r\n\r\n")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + start)
        time.sleep(0.3)  # the route is reading the body now


def test_a_disconnect_mid_upload_is_logged_as_one(server: tuple[Api, str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    api, url = server
    caplog.set_level(logging.INFO, logger="glai.api")
    _send_half_an_upload(url, api.key)
    deadline = time.monotonic() + 10
    while not any("disconnect" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]  # none from uvicorn either
    api_records = [r for r in caplog.records if r.name == "glai.api"]
    (record,) = [r for r in api_records if "disconnect" in r.getMessage()]
    assert record.levelno == logging.INFO and "POST /v1/datasets" in record.getMessage()
    assert not api.tmp_dir.exists() or list(api.tmp_dir.iterdir()) == []  # the partial upload is gone
    assert api.client.get("/v1/datasets").json()["items"] == []
