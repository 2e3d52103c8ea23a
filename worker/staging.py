"""A worker machine's local copies of stored prefixes (``datasets/<id>``, ``features/<id>/<backbone>``).

With ``LocalStorage`` nothing is copied: the stored directory is the local one. With object storage a
job needs its arrays on disk to memory-map them, so ``StagingCache.staged(prefix)`` downloads every object
under the prefix once per machine and hands out the local directory:

* **sha256 verification**: each object is hashed as it streams in and compared with the digest recorded
  when it was stored; a mismatch is retried once, then the job fails (a corrupt object never trains).
* **freshness**: a cached entry is used again only while the store still lists the same objects with the
  same ETags and sizes, and while its local files still have the sizes and modification times it wrote.
* **size bound and LRU eviction**: the entries' bytes stay under ``staging_max_bytes``: before a download,
  the least recently used entries are removed until the new one fits. An entry larger than the whole
  bound is refused (``StagingError``).
* **several worker processes on one machine** share the directory: an entry is pinned with a shared
  ``flock`` while it is staged and opened, eviction only takes entries it can lock exclusively, and one
  process downloads an entry while the others wait for it. A job's arrays are memory-mapped once opened,
  so evicting an entry later never disturbs a job that is still training on it (the disk space comes back
  when that job ends).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from glai_common.storage import IntegrityError, LocalStorage, ObjectInfo, Storage

log = logging.getLogger(__name__)

MANIFEST = ".glai-staged.json"  # written last: an entry without it is incomplete


class StagingError(Exception):
    """A stored prefix cannot be staged on this machine (too large for the cache, empty, corrupt)."""


@dataclass(frozen=True)
class CachedEntry:
    name: str
    directory: Path
    size: int
    last_used_ns: int


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _entry_name(prefix: str) -> str:
    return hashlib.sha256(prefix.encode()).hexdigest()[:32]


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[IO[bytes] | None]:
    """``flock`` on ``path`` (created if missing); yields None when a non-blocking lock is refused."""
    handle = path.open("ab")
    try:
        try:
            fcntl.flock(handle.fileno(), mode)
        except BlockingIOError:
            yield None
            return
        try:
            yield handle
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


class StagingCache:
    """Entries ``<root>/entries/<hash of prefix>/`` (files at their keys' relative paths plus a manifest),
    lock files in ``<root>/locks/``, downloads in progress in ``<root>/incoming/``."""

    def __init__(self, storage: Storage, root: Path, max_bytes: int) -> None:
        self.storage, self.root, self.max_bytes = storage, Path(root), int(max_bytes)
        self.entries, self.locks, self.incoming = (self.root / "entries", self.root / "locks",
                                                   self.root / "incoming")
        for directory in (self.entries, self.locks, self.incoming):
            directory.mkdir(parents=True, exist_ok=True)
        self._sweep_incoming()

    def _sweep_incoming(self) -> None:
        """Leftovers of processes that died mid-download or mid-delete (their pid is gone)."""
        for leftover in self.incoming.iterdir():
            parts = leftover.name.split("-")
            owner = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
            if owner is not None and _alive(owner):
                continue
            shutil.rmtree(leftover, ignore_errors=True)

    @contextmanager
    def staged(self, prefix: str) -> Iterator[Path]:
        """The local directory holding every object stored under ``prefix/``, verified and pinned (not
        evictable) until the block ends."""
        name = _entry_name(prefix)
        with _flock(self.locks / f"{name}.pin", fcntl.LOCK_SH):
            objects = self.storage.list_prefix(prefix)
            if not objects:
                raise StagingError(f"nothing is stored under {prefix}/")
            directory = self.entries / name
            if not self._fresh(directory, prefix, objects):
                with _flock(self.locks / f"{name}.fill", fcntl.LOCK_EX):  # one downloader per entry
                    if not self._fresh(directory, prefix, objects):
                        self._fill(name, prefix, objects)
            os.utime(directory / MANIFEST)  # last used: the LRU order
            yield directory

    def publish(self, prefix: str, write: Callable[[Path], None], last: str | None = None) -> None:
        """Store what ``write(directory)`` produces under ``prefix/`` (``last`` uploaded after the rest: the
        marker of a complete set) and keep the files as this machine's cached entry."""
        work = self.incoming / f"{_entry_name(prefix)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            work.mkdir(parents=True)
            write(work)
            files = sorted((p for p in work.rglob("*") if p.is_file()),
                           key=lambda p: (p.name == last, p.as_posix()))
            for path in files:
                self.storage.put_file(f"{prefix}/{path.relative_to(work).as_posix()}", path)
            self.adopt(prefix, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def adopt(self, prefix: str, source: Path) -> None:
        """Make ``source`` (files just uploaded under ``prefix/`` from it) the cached entry, moving it in
        instead of downloading what this machine already has. Hashes are those recorded in the store."""
        objects = self.storage.list_prefix(prefix)
        name = _entry_name(prefix)
        with _flock(self.locks / f"{name}.fill", fcntl.LOCK_EX):
            self._make_room(sum(o.size for o in objects), keep=name)
            files = {}
            for info in objects:
                rel = info.key[len(prefix) + 1:]
                stat = (source / rel).stat()
                if stat.st_size != info.size:
                    raise StagingError(f"{info.key}: {stat.st_size} bytes here, {info.size} in storage")
                files[rel] = {"size": info.size, "etag": info.etag, "mtime_ns": stat.st_mtime_ns}
            self._write_manifest(source, prefix, files)
            self._install(name, source)

    def entries_by_use(self) -> list[CachedEntry]:
        """Complete entries, least recently used first (incomplete ones count as never used)."""
        found = []
        for directory in self.entries.iterdir():
            if not directory.is_dir():
                continue
            manifest = directory / MANIFEST
            try:
                used = manifest.stat().st_mtime_ns
                size = sum(f["size"] for f in json.loads(manifest.read_text())["files"].values())
            except (OSError, ValueError, KeyError, TypeError):
                used, size = 0, sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
            found.append(CachedEntry(directory.name, directory, size, used))
        return sorted(found, key=lambda entry: (entry.last_used_ns, entry.name))

    def used_bytes(self) -> int:
        return sum(entry.size for entry in self.entries_by_use())

    def _fresh(self, directory: Path, prefix: str, objects: list[ObjectInfo]) -> bool:
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        files: dict[str, Any] = manifest.get("files", {})
        if manifest.get("prefix") != prefix or len(files) != len(objects):
            return False
        for info in objects:
            entry = files.get(info.key[len(prefix) + 1:])
            if entry is None or entry["etag"] != info.etag or entry["size"] != info.size:
                return False  # rewritten in the store since
            try:
                stat = (directory / info.key[len(prefix) + 1:]).stat()
            except OSError:
                return False
            if stat.st_size != entry["size"] or stat.st_mtime_ns != entry["mtime_ns"]:
                return False  # touched on this machine since it was verified
        return True

    def _fill(self, name: str, prefix: str, objects: list[ObjectInfo]) -> None:
        need = sum(info.size for info in objects)
        if need > self.max_bytes:
            raise StagingError(f"{prefix} takes {need} bytes, more than this worker's staging cache holds "
                               f"(GLAI_STAGING_MAX_BYTES={self.max_bytes})")
        self._make_room(need, keep=name)
        target = self.incoming / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            files = {}
            for info in objects:
                rel = info.key[len(prefix) + 1:]
                got = self._download_verified(info.key, target / rel)
                stat = (target / rel).stat()
                files[rel] = {"size": stat.st_size, "etag": got.etag, "sha256": got.sha256,
                              "mtime_ns": stat.st_mtime_ns}
            self._write_manifest(target, prefix, files)
            self._install(name, target)
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def _download_verified(self, key: str, target: Path) -> ObjectInfo:
        for attempt in (1, 2):
            try:
                return self.storage.download_file(key, target)
            except IntegrityError as exc:
                if attempt == 2:
                    raise StagingError(f"{exc} (twice): refusing to train on it") from exc
                log.warning("%s; downloading it again", exc)
        raise AssertionError("unreachable")

    @staticmethod
    def _write_manifest(directory: Path, prefix: str, files: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps({"prefix": prefix, "files": files, "staged_at": time.time()}))
        tmp.replace(directory / MANIFEST)

    def _install(self, name: str, source: Path) -> None:
        """Put ``source`` in place of entry ``name`` (called under the entry's fill lock)."""
        directory = self.entries / name
        if directory.exists():  # stale: move it aside first (a job that opened its files keeps them)
            trash = self.incoming / f"trash{os.getpid()}-{name}-{uuid.uuid4().hex[:8]}"
            directory.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        source.rename(directory)

    def _make_room(self, need: int, keep: str) -> None:
        """Evict least recently used entries that nobody pins until ``need`` more bytes fit."""
        entries = [entry for entry in self.entries_by_use() if entry.name != keep]
        total = sum(entry.size for entry in entries)
        for entry in entries:
            if total + need <= self.max_bytes:
                return
            with _flock(self.locks / f"{entry.name}.pin", fcntl.LOCK_EX | fcntl.LOCK_NB) as held:
                if held is None:
                    continue  # being staged or opened right now
                trash = self.incoming / f"trash{os.getpid()}-{entry.name}-{uuid.uuid4().hex[:8]}"
                try:
                    entry.directory.rename(trash)
                except OSError:
                    continue  # evicted by another process meanwhile
                shutil.rmtree(trash, ignore_errors=True)
                total -= entry.size
                log.info("staging cache: evicted %s (%d bytes, least recently used)", entry.name, entry.size)
        if total + need > self.max_bytes:
            log.warning("staging cache: %d bytes in use by running stagings; the new %d bytes exceed "
                        "GLAI_STAGING_MAX_BYTES=%d until they are released", total, need, self.max_bytes)


class LocalStaging:
    """``LocalStorage``: the stored directory itself, nothing to copy."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage

    @contextmanager
    def staged(self, prefix: str) -> Iterator[Path]:
        yield self.storage.local_path(prefix)

    def publish(self, prefix: str, write: Callable[[Path], None], last: str | None = None) -> None:
        write(self.storage.local_path(prefix))  # the writer's own temporary names make it atomic


def staging_for(storage: Storage, root: Path, max_bytes: int) -> LocalStaging | StagingCache:
    if isinstance(storage, LocalStorage):
        return LocalStaging(storage)
    return StagingCache(storage, root, max_bytes)
