"""The checkpoints of one attempt, where training writes them and where the next attempt finds them.

``glai_core`` checkpoints into a local directory. With ``LocalStorage`` that directory *is* the stored
``jobs/<id>/checkpoints/`` and there is nothing to do. With object storage the next attempt may run on
another machine, so ``CheckpointWorkspace``:

* **pulls** the job's stored checkpoints into a fresh local directory before training starts (every file
  verified against its recorded sha256), so a resumed attempt continues wherever the last one stopped;
* **pushes** every checkpoint file that changed, from a background thread about once a second (a file is
  read through the descriptor it was checked on: ``glai_core`` renames new checkpoints over old ones, so a
  file is never read half-written), and once more when the attempt ends, before its final state or hand
  back is written. A worker killed outright loses at most the last second's checkpoint on top of
  ``checkpoint_interval_s``;
* removes the local directory at the end.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

from glai_common.storage import LocalStorage, Storage, StorageUnavailable

log = logging.getLogger(__name__)

TEMPORARY_SUFFIXES = (".tmp", ".partial", ".download")  # files being written: never pushed


class CheckpointWorkspace:
    def __init__(self, storage: Storage, job_id: str, work_root: Path, interval_s: float = 1.0) -> None:
        self.storage, self.prefix = storage, f"jobs/{job_id}/checkpoints"
        self.mirrored = not isinstance(storage, LocalStorage)
        if isinstance(storage, LocalStorage):
            self.directory = storage.local_path(self.prefix)
        else:
            self.directory = Path(work_root) / "jobs" / job_id / "checkpoints"
        self.interval_s = interval_s
        self._pushed: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one push at a time (the thread and the final one)
        self._closed = False

    def open(self) -> Path:
        """The local checkpoint directory, holding what the store has (mirrored: pulled now), and the
        push thread started."""
        if not self.mirrored:
            self.directory.mkdir(parents=True, exist_ok=True)
            return self.directory
        shutil.rmtree(self.directory, ignore_errors=True)  # a previous attempt's leftovers on this machine
        self.directory.mkdir(parents=True)
        for info in self.storage.list_prefix(self.prefix):
            rel = info.key[len(self.prefix) + 1:]
            self.storage.download_file(info.key, self.directory / rel)
            stat = (self.directory / rel).stat()
            self._pushed[rel] = (stat.st_size, stat.st_mtime_ns)  # the store has these already
        self._thread = threading.Thread(target=self._run, name="glai-checkpoint-push", daemon=True)
        self._thread.start()
        return self.directory

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except (StorageUnavailable, OSError) as exc:  # retried next tick; the final push reports it
                log.warning("checkpoint push of %s failed (retried): %s", self.prefix, exc)

    def push(self) -> int:
        """Upload every checkpoint file that changed since it was last pushed; returns how many."""
        if not self.mirrored:
            return 0
        uploaded = 0
        with self._lock:
            for path in sorted(self.directory.rglob("*")):
                if path.name.endswith(TEMPORARY_SUFFIXES):
                    continue
                rel = path.relative_to(self.directory).as_posix()
                try:
                    handle = path.open("rb")
                except (FileNotFoundError, IsADirectoryError):
                    continue  # replaced or removed meanwhile, or a directory
                with handle:
                    stat = os.fstat(handle.fileno())
                    signature = (stat.st_size, stat.st_mtime_ns)
                    if self._pushed.get(rel) == signature:
                        continue
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
                    handle.seek(0)
                    self.storage.put_stream(f"{self.prefix}/{rel}", handle, digest)
                self._pushed[rel] = signature
                uploaded += 1
        return uploaded

    def close(self, push: bool = True) -> None:
        """Stop the thread; with ``push`` upload what changed last (before the attempt's final state or
        hand back is written, so the next attempt finds it). Then drop the local copy. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.mirrored:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if push:
                self.push()
        except (StorageUnavailable, OSError):
            log.warning("job checkpoints %s: the last push failed; the next attempt resumes from the one "
                        "before", self.prefix, exc_info=True)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
