"""The lean status read that pollers hit: one indexed select of a job's few moving columns.

With API keys on, the key check rides in the same statement (the job joined to an active key of its
owner), so a poll costs one database round trip and a revoked key is refused on its very next request:
nothing about keys is cached. Only when that select finds nothing does the caller's key get its own
check, to tell a bad key (401) from a job that is not the caller's (404).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import DBAPIError

from glai_common.jobs import as_utc
from glai_common.models import ApiKey, Job

COLUMNS = (Job.id, Job.state, Job.phase, Job.progress, Job.epoch, Job.cancel_requested, Job.failure_kind,
           Job.failure_message, Job.attempts, Job.created_at, Job.started_at, Job.finished_at, Job.updated_at)


def read(engine: Engine, query: Callable[[Connection], dict[str, Any] | None]) -> dict[str, Any] | None:
    """Run one read on a pooled connection, once more on a fresh one if the pooled one had died (the read
    engine does not ping on checkout)."""
    for attempt in (1, 2):
        try:
            with engine.connect() as connection:
                return query(connection)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


# Built once with bound parameters: constructing the select for every poll was a visible share of it.
BY_OWNER = select(*COLUMNS).where(Job.id == bindparam("job_id"), Job.owner == bindparam("owner"))
BY_KEY = (select(*COLUMNS).join(ApiKey, ApiKey.owner == Job.owner)
          .where(Job.id == bindparam("job_id"), ApiKey.key_hash == bindparam("key_hash"),
                 ApiKey.revoked_at.is_(None)))


def read_by_owner(db: Connection, owner: str, job_id: str) -> dict[str, Any] | None:
    row = db.execute(BY_OWNER, {"job_id": job_id, "owner": owner}).mappings().first()
    return _aware(dict(row)) if row is not None else None


def read_by_key(db: Connection, key_hash: str, job_id: str) -> dict[str, Any] | None:
    """The job when the key is active and belongs to the job's owner, else None (either may be wrong)."""
    row = db.execute(BY_KEY, {"job_id": job_id, "key_hash": key_hash}).mappings().first()
    return _aware(dict(row)) if row is not None else None


def _aware(row: dict[str, Any]) -> dict[str, Any]:
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}


def etag(row: dict[str, Any]) -> str:
    """Changes whenever any column of the status does (``updated_at`` alone can repeat within a tick)."""
    text = "|".join(str(row[c.key]) for c in COLUMNS)
    return f'W/"{hashlib.sha256(text.encode()).hexdigest()[:32]}"'


def body_etag(body: bytes) -> str:
    """A strong validator of a whole representation (``GET /v1/jobs/{id}``)."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110's weak comparison for If-None-Match: ``*`` or any listed tag, W/ prefixes ignored."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = tag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == wanted for t in if_none_match.split(","))


__all__ = ["body_etag", "etag", "matches", "read", "read_by_key", "read_by_owner"]
