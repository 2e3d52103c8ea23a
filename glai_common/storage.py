"""Artifact and upload storage behind a small interface, addressed by keys the service makes.

Keys are built from ids (``datasets/<id>/X.npy``, ``jobs/<id>/trained.safetensors``), never from
user-supplied names. ``LocalStorage`` keeps files under one root (the embedded default: every process
must see that file system); ``glai_common.s3_storage.S3Storage`` keeps them in an S3-compatible bucket,
so an API and workers on different machines share nothing but the database, the broker and the bucket.
``make_storage`` picks one from the settings (``GLAI_STORAGE_URL``).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from glai_common.settings import Settings

_KEY = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
# S3 bucket names (the rules every provider shares): 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
CHUNK = 1024 * 1024


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class StorageUnavailable(Exception):
    """The store could not be reached (connection refused, timed out): not the job's or the user's fault."""


class IntegrityError(Exception):
    """A stored object's bytes do not match the sha256 recorded when it was written."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. ``etag`` changes whenever the object is rewritten; ``sha256`` is the digest
    recorded at write time when the store keeps one (S3 metadata), else None."""

    key: str
    size: int
    etag: str
    sha256: str | None = None


class Storage(Protocol):
    def put_file(self, key: str, source: Path, sha256: str | None = None) -> None: ...
    def put_stream(self, key: str, handle: BinaryIO, sha256: str) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def read_range(self, key: str, start: int, length: int, chunk: int = CHUNK) -> Iterator[bytes]: ...
    def stat(self, key: str) -> ObjectInfo | None: ...
    def list_prefix(self, prefix: str) -> list[ObjectInfo]: ...
    def download_file(self, key: str, target: Path) -> ObjectInfo: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...


class LocalStorage:
    """Files under ``root``. ``local_path`` lets numpy memory-map a stored array without a copy."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def local_path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, source: Path, sha256: str | None = None) -> None:
        """Move (or copy) ``source`` into place atomically: readers never see half a file."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        shutil.copyfile(source, tmp)
        tmp.replace(target)

    def put_stream(self, key: str, handle: BinaryIO, sha256: str) -> None:
        """Copy an open file from its current position into place, atomically as ``put_file``."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        with tmp.open("wb") as out:
            shutil.copyfileobj(handle, out, CHUNK)
        tmp.replace(target)

    def open(self, key: str) -> BinaryIO:
        return self.local_path(key).open("rb")

    def read_range(self, key: str, start: int, length: int, chunk: int = CHUNK) -> Iterator[bytes]:
        """``length`` bytes from ``start``, in blocks of at most ``chunk``."""
        with self.open(key) as handle:
            handle.seek(start)
            remaining = length
            while remaining > 0:
                block = handle.read(min(chunk, remaining))
                if not block:
                    break
                remaining -= len(block)
                yield block

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            info = self.local_path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, info.st_size, f"{info.st_mtime_ns:x}-{info.st_size:x}")

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Every file under ``prefix/``, sorted by key."""
        base = self.local_path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        found = []
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not p.name.endswith(".partial")):
            info = self.stat(path.relative_to(self.root).as_posix())
            if info is not None:
                found.append(info)
        return found

    def download_file(self, key: str, target: Path) -> ObjectInfo:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.local_path(key), target)
        info = self.stat(key)
        if info is None:
            raise FileNotFoundError(key)
        return info

    def size(self, key: str) -> int:
        return self.local_path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.local_path(key).exists()

    def delete_prefix(self, prefix: str) -> None:
        path = self.local_path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def parse_storage_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix"); a ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"GLAI_STORAGE_URL must look like s3://bucket/prefix (got scheme {parts.scheme!r}); "
                         "leave it unset for local storage in GLAI_STORAGE_DIR")
    if parts.query or parts.fragment or parts.username or parts.port:
        raise ValueError("GLAI_STORAGE_URL takes no credentials, port, query or fragment: the endpoint and "
                         "keys are GLAI_S3_ENDPOINT_URL and GLAI_S3_ACCESS_KEY_ID / _SECRET_ACCESS_KEY")
    bucket = parts.netloc  # as written: hostname would lower-case it
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"GLAI_STORAGE_URL names no valid bucket ({bucket!r}): 3-63 lowercase letters, "
                         "digits, dots and hyphens")
    prefix = parts.path.strip("/")
    if prefix:
        check_key(prefix)
    return bucket, prefix


def make_storage(settings: Settings) -> Storage:
    """S3 when ``storage_url`` is set, else LocalStorage in ``storage_dir`` (the embedded default)."""
    if settings.storage_url:
        from glai_common.s3_storage import S3Storage

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.resolved_storage_dir)


def prepare_storage(settings: Settings) -> Storage:
    """The store, ready for use: the bucket created when missing (compose's migrate step), or the local
    root made."""
    storage = make_storage(settings)
    ensure = getattr(storage, "ensure_bucket", None)
    if ensure is not None:
        ensure()
    return storage


def get_storage() -> Storage:
    from glai_common.settings import get_settings

    return make_storage(get_settings())
