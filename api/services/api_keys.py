"""API keys: issued once in clear, stored as SHA-256, shown afterwards only by their prefix.

Used by the API (to authenticate) and by ``glai admin`` / ``glai serve`` (to issue and revoke keys
directly on the database).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from glai_common.models import ApiKey, utcnow

KEY_PREFIX = "glai_"
PREFIX_LEN = 12  # "glai_" + 7 characters: enough to tell keys apart in a listing
KEY_FORMAT = re.compile(r"glai_[A-Za-z0-9_-]{16,128}")  # create_key issues 43 (token_urlsafe(32))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    key: str  # the secret, shown once
    prefix: str
    owner: str


def create_key(session: Session, owner: str, name: str = "") -> IssuedKey:
    """Issue a new key for ``owner`` and commit it."""
    if not owner or len(owner) > 128:
        raise ValueError("owner must be 1-128 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, name=name, key_hash=hash_key(key), prefix=key[:PREFIX_LEN]))
    session.commit()
    return IssuedKey(key=key, prefix=key[:PREFIX_LEN], owner=owner)


def well_formed(key: str) -> bool:
    return KEY_FORMAT.fullmatch(key) is not None


def owner_for_key(session: Session, key: str) -> str | None:
    """The owner of an active key, else None (malformed, unknown and revoked look the same).

    The secret is never compared: the row is found by the SHA-256 of the presented key, so response
    time depends on a hash the caller cannot steer byte by byte; the final equality check is constant
    time anyway. Malformed keys (wrong prefix, length or alphabet) never reach the database.
    """
    if not well_formed(key):
        return None
    digest = hash_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        return None
    return row.owner


def revoke_key(session: Session, prefix: str) -> int:
    """Revoke the active key(s) with exactly this prefix (or this whole key); returns how many. Commits.

    Exact match on purpose: a short prefix such as "glai_" must never revoke every key.
    """
    match = ApiKey.key_hash == hash_key(prefix) if len(prefix) > PREFIX_LEN else ApiKey.prefix == prefix
    rows = session.scalars(select(ApiKey).where(match, ApiKey.revoked_at.is_(None))).all()
    for row in rows:
        row.revoked_at = utcnow()
    session.commit()
    return len(rows)


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all())
