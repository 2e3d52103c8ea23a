"""Loaded models kept per API process, so a prediction does not read and parse its model file each time.

Keyed by (storage key, sha256): a file rewritten by a resumed export has another digest and is loaded
afresh, and an entry can never answer for a different file. Bounded two ways, the number of models and
the bytes of their files (a proxy for their memory), evicting the least recently used. Requests for a
model not loaded yet wait for one load instead of each loading it (concurrent requests for other models
go on). Hand-written because those three together (two bounds, one load per key) are not what the
cache libraries' decorators give; it is a dict and a lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
Key = tuple[str, str]


@dataclass
class _Entry(Generic[T]):
    value: T
    size: int


class ModelCache(Generic[T]):
    def __init__(self, max_models: int, max_bytes: int) -> None:
        self.max_models, self.max_bytes = max_models, max_bytes
        self._entries: OrderedDict[Key, _Entry[T]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Key, threading.Lock] = {}
        self.loads = 0  # models read from storage, since the process started (tests and logs read it)
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _cached(self, key: Key) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.value

    def get(self, key: Key, size: int, load: Callable[[], T]) -> T:
        """The value for ``key``, loaded with ``load()`` (a file of ``size`` bytes) when not cached."""
        with self._lock:
            value = self._cached(key)
            if value is not None:
                return value
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                value = self._cached(key)  # loaded by the request this one waited for
                if value is not None:
                    return value
            try:
                value = load()
                with self._lock:
                    self.loads += 1
                    if self.max_models > 0 and size <= self.max_bytes:
                        self._entries[key] = _Entry(value, size)
                        self._evict()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        return value

    def _evict(self) -> None:
        total = sum(entry.size for entry in self._entries.values())
        while self._entries and (len(self._entries) > self.max_models or total > self.max_bytes):
            _, entry = self._entries.popitem(last=False)
            total -= entry.size

    def discard_prefix(self, prefix: str) -> None:
        """Forget every model stored under ``prefix`` (a deleted job's ``jobs/<id>/``)."""
        with self._lock:
            for key in [k for k in self._entries if k[0].startswith(prefix)]:
                del self._entries[key]
