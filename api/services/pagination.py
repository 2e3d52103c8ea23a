"""Opaque keyset cursors over (created_at, id), newest first.

A cursor is base64url(JSON {"t": created_at ISO-8601 UTC, "id": last id}); the next page holds rows
strictly before that pair. Stable under inserts (new rows land on page one) and O(page) per request.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
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


_ID = re.compile(r"[0-9a-f]{32}")  # every row id is uuid4 hex (glai_common.models.new_id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) pair of a cursor this API made. Anything else is a 422 naming ``cursor``, and
    that includes a well-formed one whose id is no row id: its text would reach the query (PostgreSQL
    refuses NUL characters in text with an error, not an empty page)."""
    invalid = ApiError(422, "cursor is not one this API returned (pass a page's next_cursor unchanged)",
                       "cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        stamp, ident = data["t"], data["id"]
        if not isinstance(stamp, str) or not isinstance(ident, str) or _ID.fullmatch(ident) is None:
            raise invalid
        return as_utc(datetime.fromisoformat(stamp)), ident
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        raise invalid from exc


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
