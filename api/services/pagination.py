"""Opaque keyset cursors over (created_at, id), newest first.

A cursor is base64url(JSON {"t": created_at ISO-8601 UTC, "id": last id}); the next page holds rows
strictly before that pair. Stable under inserts (new rows land on page one) and O(page) per request.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, or_

from api.errors import ApiError


def as_utc(value: datetime) -> datetime:
    """Naive datetimes (SQLite) are UTC; aware ones are converted."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def encode_cursor(created_at: datetime, ident: str) -> str:
    raw = json.dumps({"t": as_utc(created_at).isoformat(), "id": ident}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        return as_utc(datetime.fromisoformat(data["t"])), str(data["id"])
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ApiError(422, "cursor is not one this API returned", "cursor") from exc


def page(query: Select[Any], model: Any, cursor: str | None, limit: int) -> Select[Any]:
    """Order newest first and start after ``cursor``; fetch one extra row to know if a next page exists."""
    if cursor:
        t, ident = decode_cursor(cursor)
        query = query.where(or_(model.created_at < t, and_(model.created_at == t, model.id < ident)))
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


def split_page(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)
