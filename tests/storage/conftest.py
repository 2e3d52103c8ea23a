"""Stores for the storage tests: LocalStorage in a temporary directory and S3Storage on a real S3 HTTP
endpoint (moto's server, ``tests/s3_server.py``), each S3 test in a bucket of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from glai_common.s3_storage import S3Storage
from glai_common.storage import LocalStorage, Storage
from tests.s3_server import S3Endpoint


@pytest.fixture
def s3_storage(s3: S3Endpoint) -> S3Storage:
    return s3.store(s3_multipart_chunk_bytes=5 * 1024**2)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Both stores behind the one interface: every contract test runs on each."""
    if request.param == "local":
        return LocalStorage(tmp_path / "stored")
    return request.getfixturevalue("s3_storage")  # type: ignore[no-any-return]
