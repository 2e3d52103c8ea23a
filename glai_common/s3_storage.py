"""``S3Storage``: the ``Storage`` interface on an S3-compatible bucket (AWS S3, MinIO, moto) through boto3.

``GLAI_STORAGE_URL=s3://bucket/prefix`` selects it; every key lives under ``prefix/``. Each object is
written with its sha256 in the object's metadata (``x-amz-meta-sha256``), so whoever downloads it
(a worker's staging cache, a checkpoint pull) verifies the bytes it got. Files above
``s3_multipart_chunk_bytes`` are uploaded in parts streamed from disk (boto3's transfer manager); reads
stream too, ranged reads with an HTTP ``Range`` request. Connection failures surface as
``StorageUnavailable`` (after botocore's own retries), a missing object as ``FileNotFoundError``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from glai_common.storage import (
    CHUNK,
    IntegrityError,
    ObjectInfo,
    StorageUnavailable,
    check_key,
    parse_storage_url,
    sha256_file,
)

if TYPE_CHECKING:
    from glai_common.settings import Settings

SHA256_META = "sha256"  # x-amz-meta-sha256
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """botocore's errors in the service's terms: missing -> FileNotFoundError, unreachable ->
    StorageUnavailable; anything else (access denied, a bad bucket) propagates as it is."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            raise FileNotFoundError(f"{what}: not in storage ({code})") from exc
        raise
    except (BotoConnectionError, HTTPClientError) as exc:
        raise StorageUnavailable(f"object storage unreachable ({what}): {exc}") from exc


def make_client(settings: Settings) -> Any:
    """A boto3 S3 client from the GLAI_S3_* settings; what they leave unset comes from boto3's standard
    chain (AWS_* variables, ~/.aws, an instance role)."""
    style = settings.s3_addressing_style or ("path" if settings.s3_endpoint_url else None)
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"},
                    s3={"addressing_style": style} if style else None, max_pool_connections=32)
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id, aws_secret_access_key=secret, config=config)


class S3Storage:
    """Objects ``<prefix>/<key>`` in ``bucket``. No ``local_path``: whoever needs files on disk downloads
    them (the worker through its staging cache)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "",
                 multipart_chunk_bytes: int = 16 * 1024**2) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.transfer = TransferConfig(multipart_threshold=multipart_chunk_bytes,
                                       multipart_chunksize=multipart_chunk_bytes, use_threads=True,
                                       max_concurrency=4)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        assert settings.storage_url
        bucket, prefix = parse_storage_url(settings.storage_url)
        return cls(make_client(settings), bucket, prefix, settings.s3_multipart_chunk_bytes)

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1:] if self.prefix else name

    def ensure_bucket(self) -> None:
        """Create the bucket if it is not there (compose's migrate step, tests); an existing one is kept."""
        with _translated(f"bucket {self.bucket}"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) not in _MISSING:
                    raise
            region = self.client.meta.region_name
            extra = ({"CreateBucketConfiguration": {"LocationConstraint": region}}
                     if region and region != "us-east-1" else {})
            try:
                self.client.create_bucket(Bucket=self.bucket, **extra)
            except ClientError as exc:  # created by someone else meanwhile
                if str(exc.response.get("Error", {}).get("Code", "")) not in {"BucketAlreadyOwnedByYou",
                                                                              "BucketAlreadyExists"}:
                    raise

    def put_file(self, key: str, source: Path, sha256: str | None = None) -> None:
        """Upload ``source`` (multipart above the chunk size, streamed from disk) with its sha256. S3 makes
        the object visible only once complete, so readers never see half a file."""
        digest = sha256 or sha256_file(source)
        with _translated(key):
            self.client.upload_file(str(source), self.bucket, self._name(key),
                                    ExtraArgs={"Metadata": {SHA256_META: digest}}, Config=self.transfer)

    def put_stream(self, key: str, handle: BinaryIO, sha256: str) -> None:
        """Upload an open file from its current position (the checkpoint mirror: a file read through the
        descriptor it was checked on, even if it is renamed over meanwhile)."""
        with _translated(key):
            self.client.upload_fileobj(handle, self.bucket, self._name(key),
                                       ExtraArgs={"Metadata": {SHA256_META: sha256}}, Config=self.transfer)

    def open(self, key: str) -> BinaryIO:
        with _translated(key):
            return cast(BinaryIO, self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"])

    def read_range(self, key: str, start: int, length: int, chunk: int = CHUNK) -> Iterator[bytes]:
        """``length`` bytes from ``start`` with one ranged GET, streamed in blocks of at most ``chunk``."""
        if length <= 0:
            return
        with _translated(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._name(key),
                                          Range=f"bytes={start}-{start + length - 1}")["Body"]
        try:
            with _translated(key):
                yield from body.iter_chunks(chunk)
        finally:
            body.close()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with _translated(key):
                head = self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, int(head["ContentLength"]), str(head["ETag"]).strip('"'),
                          head.get("Metadata", {}).get(SHA256_META))

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix/``, sorted by key (sha256 is not in a listing: None)."""
        found: list[ObjectInfo] = []
        with _translated(f"list {prefix}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._name(prefix.rstrip("/")) + "/")
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(ObjectInfo(self._key(item["Key"]), int(item["Size"]),
                                            str(item["ETag"]).strip('"')))
        return sorted(found, key=lambda info: info.key)

    def download_file(self, key: str, target: Path) -> ObjectInfo:
        """Stream the object to ``target`` while hashing it; a digest that differs from the one recorded
        at upload raises ``IntegrityError`` and leaves no file. The file appears complete or not at all."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".download")
        digest = hashlib.sha256()
        with _translated(key):
            reply = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
            expected = reply.get("Metadata", {}).get(SHA256_META)
            body = reply["Body"]
            try:
                with open(tmp, "wb") as handle:
                    for block in body.iter_chunks(CHUNK):
                        digest.update(block)
                        handle.write(block)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            finally:
                body.close()
        actual = digest.hexdigest()
        if expected and expected != actual:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"{key}: downloaded bytes have sha256 {actual}, but {expected} was recorded "
                                 "when it was stored")
        os.replace(tmp, target)
        return ObjectInfo(key, target.stat().st_size, str(reply["ETag"]).strip('"'), expected or actual)

    def size(self, key: str) -> int:
        info = self.stat(key)
        if info is None:
            raise FileNotFoundError(key)
        return info.size

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def delete_prefix(self, prefix: str) -> None:
        """The object ``prefix`` itself and everything under ``prefix/``."""
        prefix = prefix.rstrip("/")
        names = [self._name(info.key) for info in self.list_prefix(prefix)]
        if self.stat(prefix) is not None:
            names.append(self._name(prefix))
        with _translated(f"delete {prefix}"):
            for start in range(0, len(names), _DELETE_BATCH):
                batch = [{"Key": name} for name in names[start:start + _DELETE_BATCH]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
