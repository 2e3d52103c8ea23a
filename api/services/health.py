"""Readiness checks: can we reach the database and the broker right now?"""

from __future__ import annotations

from kombu import Connection
from sqlalchemy import Engine, text


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
