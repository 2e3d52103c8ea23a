"""Artifact and upload storage behind a small interface, addressed by keys the service makes.

Keys are built from ids (``datasets/<id>/X.npy``, ``jobs/<id>/trained.safetensors``), never from
user-supplied names. ``LocalStorage`` keeps files under one root; an S3-compatible store would
implement the same methods for multi-machine deployments.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(Protocol):
    def put_file(self, key: str, source: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path: ...
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

    def put_file(self, key: str, source: Path) -> None:
        """Move (or copy) ``source`` into place atomically: readers never see half a file."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        shutil.copyfile(source, tmp)
        tmp.replace(target)

    def open(self, key: str) -> BinaryIO:
        return self.local_path(key).open("rb")

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


def sha256_file(path: Path, chunk: int = 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def get_storage() -> LocalStorage:
    from glai_common.settings import get_settings

    return LocalStorage(get_settings().resolved_storage_dir)
