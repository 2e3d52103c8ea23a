"""The API on object storage (GLAI_STORAGE_URL=s3://..., a real S3 endpoint): uploads land in the bucket
with their sha256, a rejected upload leaves nothing there, downloads keep Range, ETag and HEAD, an
unreachable store is a 503 that stores nothing, and /readyz checks the bucket."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from glai_common.models import Dataset
from glai_common.s3_storage import S3Storage
from tests.api.helpers import Api, csv_bytes, dataset_id, insert_job, upload
from tests.s3_server import S3Endpoint

CONTENT = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def s3_api(make_api: Callable[..., Api], s3: S3Endpoint) -> Api:
    return make_api(**s3.settings(s3.new_bucket()))


def _store(api: Api) -> S3Storage:
    assert isinstance(api.services.storage, S3Storage)
    return api.services.storage


def _rows(api: Api) -> int:
    with api.session() as session:
        return int(session.scalar(select(func.count()).select_from(Dataset).where(Dataset.owner == api.owner))
                   or 0)


def test_an_upload_is_stored_in_the_bucket_with_its_digests(s3_api: Api) -> None:
    response = upload(s3_api, csv_bytes(label="kind"), "t.csv", label_column="kind")
    assert response.status_code == 201, response.text
    ident = response.json()["id"]
    store = _store(s3_api)
    objects = store.list_prefix(f"datasets/{ident}")
    assert {o.key.rsplit("/", 1)[1] for o in objects} >= {"X.npy", "y.npy", "meta.json"}
    for info in objects:
        data = b"".join(store.read_range(info.key, 0, info.size))
        assert store.stat(info.key).sha256 == hashlib.sha256(data).hexdigest()  # type: ignore[union-attr]
    assert sum(o.size for o in objects) == response.json()["stored_bytes"]
    assert not s3_api.storage_root.exists()  # nothing on this machine's disk
    assert s3_api.client.delete(f"/v1/datasets/{ident}").status_code == 204
    assert store.list_prefix(f"datasets/{ident}") == []


def test_a_rejected_upload_leaves_nothing_in_the_bucket(s3_api: Api) -> None:
    response = upload(s3_api, csv_bytes(), "t.csv", label_column="missing")
    assert response.status_code == 422 and response.json()["field"] == "label_column"
    assert _store(s3_api).list_prefix("datasets") == [] and _rows(s3_api) == 0


def test_downloads_from_the_bucket_keep_range_etag_and_head(s3_api: Api) -> None:
    job = insert_job(s3_api, dataset_id(s3_api), "succeeded", artifact=CONTENT)
    url = f"/v1/jobs/{job}/artifacts/trained"
    etag = f'"{hashlib.sha256(CONTENT).hexdigest()}"'
    full = s3_api.client.get(url)
    assert full.status_code == 200 and full.content == CONTENT and full.headers["etag"] == etag
    part = s3_api.client.get(url, headers={"Range": "bytes=1000-4999"})
    assert part.status_code == 206 and part.content == CONTENT[1000:5000]
    assert part.headers["content-range"] == f"bytes 1000-4999/{len(CONTENT)}"
    assert s3_api.client.get(url, headers={"Range": "bytes=-10"}).content == CONTENT[-10:]
    assert s3_api.client.get(url, headers={"Range": f"bytes={len(CONTENT)}-"}).status_code == 416
    assert s3_api.client.get(url, headers={"If-None-Match": etag}).status_code == 304
    stale = s3_api.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == CONTENT
    head = s3_api.client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(CONTENT)) and head.headers["etag"] == etag
    _store(s3_api).delete_prefix(f"jobs/{job}")
    gone = s3_api.client.get(url)
    assert gone.status_code == 410 and "missing from storage" in gone.json()["detail"]


def test_readyz_checks_the_bucket(s3_api: Api) -> None:
    body = s3_api.client.get("/readyz").json()
    assert body["checks"]["storage"] == "ok"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_store_is_a_503_that_stores_nothing(make_api: Callable[..., Api]) -> None:
    api = make_api(storage_url="s3://glai-nowhere/p", s3_endpoint_url=f"http://127.0.0.1:{_closed_port()}",
                   s3_access_key_id="k", s3_secret_access_key="s", s3_region="us-east-1")
    ready = api.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["storage"].startswith("unreachable")
    response = upload(api)
    assert response.status_code == 503, response.text
    assert "storage is unreachable" in response.json()["detail"] and response.headers["retry-after"]
    assert _rows(api) == 0
