"""Readiness checks: can we reach the database, the broker (and object storage, when used) right now?"""

from __future__ import annotations

from kombu import Connection
from sqlalchemy import Engine, text

from glai_common.storage import Storage


def check_database(engine: Engine) -> str:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}: {exc}"[:300]


def check_broker(url: str, timeout_s: float = 2.0) -> str:
    try:
        with Connection(url, connect_timeout=timeout_s) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
        return "ok"
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}: {exc}"[:300]


def check_storage(storage: Storage) -> str:
    """One HEAD of a key nobody writes: 'not found' means the bucket answers with our credentials."""
    try:
        storage.stat("readyz-probe")
        return "ok"
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}: {exc}"[:300]
