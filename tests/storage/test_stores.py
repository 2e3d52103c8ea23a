"""The Storage contract on LocalStorage and on S3Storage against a real S3 endpoint; S3's own parts
(multipart uploads, sha256 metadata and its verification, errors) and GLAI_STORAGE_URL parsing."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from glai_common.s3_storage import S3Storage
from glai_common.settings import Settings
from glai_common.storage import (
    IntegrityError,
    LocalStorage,
    Storage,
    StorageUnavailable,
    make_storage,
    parse_storage_url,
    sha256_file,
)
from tests.s3_server import S3Endpoint


def _file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def test_put_stat_read_list_download_delete(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    storage.put_file("jobs/j1/trained.safetensors", _file(tmp_path, "a", data))
    storage.put_file("jobs/j1/checkpoints/structural.safetensors", _file(tmp_path, "b", b"ckpt"))
    storage.put_file("jobs/j10/other.bin", _file(tmp_path, "c", b"not under jobs/j1"))

    info = storage.stat("jobs/j1/trained.safetensors")
    assert info is not None and info.size == len(data) and info.etag
    assert storage.size("jobs/j1/trained.safetensors") == len(data)
    assert storage.exists("jobs/j1/trained.safetensors") and not storage.exists("jobs/j1/nothing")
    assert storage.stat("jobs/j1/nothing") is None

    part = storage.read_range("jobs/j1/trained.safetensors", 1000, 5000, chunk=1024)
    assert b"".join(part) == data[1000:6000]
    assert b"".join(storage.read_range("jobs/j1/trained.safetensors", 0, len(data))) == data
    with storage.open("jobs/j1/trained.safetensors") as handle:
        assert handle.read() == data

    assert [i.key for i in storage.list_prefix("jobs/j1")] == ["jobs/j1/checkpoints/structural.safetensors",
                                                              "jobs/j1/trained.safetensors"]
    assert storage.list_prefix("jobs/none") == []

    got = storage.download_file("jobs/j1/trained.safetensors", tmp_path / "down" / "t.bin")
    assert (tmp_path / "down" / "t.bin").read_bytes() == data and got.size == len(data)

    digest = hashlib.sha256(b"streamed bytes").hexdigest()
    storage.put_stream("jobs/j1/streamed.bin", io.BytesIO(b"streamed bytes"), digest)
    assert b"".join(storage.read_range("jobs/j1/streamed.bin", 0, 14)) == b"streamed bytes"

    storage.delete_prefix("jobs/j1")
    assert storage.list_prefix("jobs/j1") == [] and not storage.exists("jobs/j1/trained.safetensors")
    assert storage.exists("jobs/j10/other.bin")  # a sibling sharing the prefix's characters is kept
    storage.delete_prefix("jobs/j10/other.bin")  # a single object by its own key
    assert not storage.exists("jobs/j10/other.bin")


def test_rewriting_an_object_changes_its_etag(storage: Storage, tmp_path: Path) -> None:
    storage.put_file("datasets/d/X.npy", _file(tmp_path, "a", b"one"))
    first = storage.stat("datasets/d/X.npy")
    storage.put_file("datasets/d/X.npy", _file(tmp_path, "b", b"second version"))
    second = storage.stat("datasets/d/X.npy")
    assert first is not None and second is not None and first.etag != second.etag


def test_keys_are_checked(storage: Storage, tmp_path: Path) -> None:
    for bad in ("../escape", "jobs//x", "/abs", "a/./b", "name with space"):
        with pytest.raises(ValueError, match="invalid storage key"):
            storage.put_file(bad, _file(tmp_path, "a", b"x"))


def test_large_files_upload_in_parts_with_their_sha256(s3_storage: S3Storage, tmp_path: Path) -> None:
    data = os.urandom(11 * 1024**2 + 17)  # 5 MiB parts: 3 of them
    path = _file(tmp_path, "big", data)
    s3_storage.put_file("jobs/j/big.bin", path)
    info = s3_storage.stat("jobs/j/big.bin")
    assert info is not None and info.size == len(data)
    assert info.etag.endswith("-3"), info.etag  # S3's ETag of a 3-part multipart upload
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    got = s3_storage.download_file("jobs/j/big.bin", tmp_path / "back")
    assert got.sha256 == info.sha256 and sha256_file(tmp_path / "back") == info.sha256
    # A ranged read across a part boundary is one GET, streamed.
    start = 5 * 1024**2 - 10
    assert b"".join(s3_storage.read_range("jobs/j/big.bin", start, 100)) == data[start:start + 100]


def test_small_files_are_one_put(s3_storage: S3Storage, tmp_path: Path) -> None:
    s3_storage.put_file("jobs/j/small.bin", _file(tmp_path, "s", b"small"))
    info = s3_storage.stat("jobs/j/small.bin")
    assert info is not None and "-" not in info.etag  # a single PUT's ETag is the MD5
    assert info.etag == hashlib.md5(b"small").hexdigest()  # noqa: S324 - what S3 computes


def test_a_corrupt_object_fails_verification_and_leaves_no_file(s3_storage: S3Storage,
                                                                 tmp_path: Path) -> None:
    s3_storage.put_file("datasets/d/X.npy", _file(tmp_path, "a", b"the real bytes"))
    recorded = s3_storage.stat("datasets/d/X.npy")
    assert recorded is not None and recorded.sha256
    # Someone rewrites the bytes behind the service's back, keeping the recorded digest.
    s3_storage.client.put_object(Bucket=s3_storage.bucket, Key=s3_storage._name("datasets/d/X.npy"),
                                 Body=b"other bytes!!!", Metadata={"sha256": recorded.sha256})
    target = tmp_path / "staged" / "X.npy"
    with pytest.raises(IntegrityError, match="sha256"):
        s3_storage.download_file("datasets/d/X.npy", target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_missing_objects_are_file_not_found(s3_storage: S3Storage, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        s3_storage.download_file("jobs/none/x.bin", tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        list(s3_storage.read_range("jobs/none/x.bin", 0, 10))
    with pytest.raises(FileNotFoundError):
        s3_storage.size("jobs/none/x.bin")


def test_an_unreachable_endpoint_is_storage_unavailable(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = make_storage(Settings(storage_url="s3://bucket/p", s3_endpoint_url=f"http://127.0.0.1:{port}",
                                  s3_access_key_id="k", s3_secret_access_key="s",  # type: ignore[arg-type]
                                  s3_region="us-east-1"))
    assert isinstance(store, S3Storage)
    with pytest.raises(StorageUnavailable, match="unreachable"):
        store.stat("jobs/x")
    with pytest.raises(StorageUnavailable):
        store.put_file("jobs/x", _file(tmp_path, "a", b"x"))


def test_storage_url_selects_the_store(s3: S3Endpoint, tmp_path: Path) -> None:
    assert isinstance(make_storage(Settings(data_dir=tmp_path)), LocalStorage)  # the embedded default
    bucket = s3.store().bucket
    store = make_storage(Settings(**s3.settings(bucket, prefix="team/glai")))  # type: ignore[arg-type]
    assert isinstance(store, S3Storage) and (store.bucket, store.prefix) == (bucket, "team/glai")
    store.put_file("jobs/j/a.bin", _file(tmp_path, "a", b"x"))
    keys = [o["Key"] for o in store.client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["team/glai/jobs/j/a.bin"]  # under the prefix, nowhere else


@pytest.mark.parametrize(("url", "expected"), [
    ("s3://my-bucket", ("my-bucket", "")),
    ("s3://my-bucket/", ("my-bucket", "")),
    ("s3://my.bucket/some/prefix/", ("my.bucket", "some/prefix")),
])
def test_storage_urls(url: str, expected: tuple[str, str]) -> None:
    assert parse_storage_url(url) == expected


@pytest.mark.parametrize(("url", "message"), [
    ("http://bucket/x", "s3://bucket/prefix"),
    ("/var/glai", "s3://bucket/prefix"),
    ("s3://UPPER/x", "no valid bucket"),
    ("s3://ab/x", "no valid bucket"),
    ("s3://key:secret@bucket/x", "no credentials"),
    ("s3://bucket:9000/x", "no credentials"),
    ("s3://bucket/../x", "invalid storage key"),
    ("s3://bucket/x?region=eu", "no credentials"),
])
def test_bad_storage_urls_are_refused_at_startup(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match="storage_url") as caught:
        Settings(storage_url=url)
    assert message in str(caught.value)


def test_prepare_storage_creates_the_bucket_once(s3: S3Endpoint, tmp_path: Path) -> None:
    from glai_common.storage import prepare_storage

    settings = Settings(**s3.settings(f"glai-prepare-{os.urandom(6).hex()}"))  # type: ignore[arg-type]
    store = prepare_storage(settings)
    assert isinstance(store, S3Storage) and store.list_prefix("jobs") == []
    prepare_storage(settings)  # an existing bucket is kept, with what it holds
    local = prepare_storage(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalStorage) and local.root.is_dir()
