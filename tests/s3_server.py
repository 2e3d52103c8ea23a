"""A real S3 HTTP endpoint for the tests: moto's standalone server.

``.ci/run`` starts one on ``GLAI_TEST_S3_ENDPOINT`` (default http://127.0.0.1:5000) before the tests.
When nothing answers there, a local run starts a private server on a free port for the session
(``python -m moto.server``); under ``CI=true`` a missing endpoint fails instead, as for PostgreSQL and
Redis. Each test gets a bucket of its own, so tests never see each other's objects.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from glai_common.s3_storage import S3Storage

ENDPOINT = os.environ.get("GLAI_TEST_S3_ENDPOINT", "http://127.0.0.1:5000")
# moto accepts any credentials; these only have to be present and the same everywhere.
CREDENTIALS = {"s3_access_key_id": "glai-test", "s3_secret_access_key": "glai-test-secret",
               "s3_region": "us-east-1"}


@dataclass(frozen=True)
class S3Endpoint:
    url: str

    def settings(self, bucket: str, prefix: str = "glai") -> dict[str, str]:
        """GLAI_* settings (lower-case names, no prefix) for a store in ``bucket``."""
        return {"storage_url": f"s3://{bucket}/{prefix}", "s3_endpoint_url": self.url, **CREDENTIALS}

    def env(self, bucket: str, prefix: str = "glai") -> dict[str, str]:
        return {f"GLAI_{name.upper()}": value for name, value in self.settings(bucket, prefix).items()}

    def new_bucket(self) -> str:
        """A fresh, empty bucket (created through the service's own code path)."""
        return self.store().bucket

    def store(self, prefix: str = "glai", **settings: object) -> S3Storage:
        """An ``S3Storage`` on a fresh, empty bucket it has just created (``ensure_bucket``)."""
        from glai_common.s3_storage import S3Storage
        from glai_common.settings import Settings

        bucket = f"glai-test-{uuid.uuid4().hex[:16]}"
        store = S3Storage.from_settings(Settings(**self.settings(bucket, prefix), **settings))  # type: ignore[arg-type]
        store.ensure_bucket()
        return store


def _answers_s3(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1):
            pass
    except OSError:
        return False
    import httpx

    try:  # anything that speaks S3 answers a bucket listing with XML (moto: 200, real S3: 403)
        reply = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return False
    return "xml" in reply.headers.get("content-type", "") or reply.text.lstrip().startswith("<?xml")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _private_server(log_dir: Path) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (log_dir / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _answers_s3(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on {url}:\n"
                                   + (log_dir / "moto.log").read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def s3_endpoint_for_session(log_dir: Path) -> Iterator[S3Endpoint | str]:
    """The endpoint, or the reason there is none (the fixture skips or fails on it)."""
    if _answers_s3(ENDPOINT):
        yield S3Endpoint(ENDPOINT)
        return
    if os.environ.get("CI") == "true":
        yield f"no S3 endpoint answers on {ENDPOINT} (CI=true: .ci/run starts moto's server there)"
        return
    try:
        import moto.server  # noqa: F401
    except ImportError:
        yield f"no S3 endpoint on {ENDPOINT} and moto is not installed (pip install 'moto[server]')"
        return
    with _private_server(log_dir) as url:
        yield S3Endpoint(url)


def require(endpoint: S3Endpoint | str) -> S3Endpoint:
    if isinstance(endpoint, S3Endpoint):
        return endpoint
    if os.environ.get("CI") == "true":
        pytest.fail(endpoint)
    pytest.skip(endpoint)
