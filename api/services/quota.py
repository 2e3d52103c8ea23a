"""The per-owner storage quota (GLAI_MAX_OWNER_STORAGE_BYTES): the bytes an owner's datasets take as
stored, checked before a new one is committed.

An upload is read into a staging directory first (bounded by GLAI_MAX_DECOMPRESSED_BYTES), so its stored
size is known exactly before anything lands in storage; one over the quota is a 413 and leaves nothing.
The last check (``reserve``) runs in the transaction that inserts the row, under a per-owner lock held to
its commit, so two uploads racing for the last bytes cannot both land. Rows from before the size was
recorded count their upload size.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from api.errors import ApiError
from glai_common.models import Dataset

SETTING = "GLAI_MAX_OWNER_STORAGE_BYTES"


def staged_bytes(staging: Path) -> int:
    return sum(item.stat().st_size for item in staging.iterdir() if item.is_file())


def used_bytes(db: Session, owner: str) -> int:
    size = func.coalesce(Dataset.stored_bytes, Dataset.size_bytes)
    return int(db.scalar(select(func.coalesce(func.sum(size), 0)).where(Dataset.owner == owner)) or 0)


def _gb(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 10**7 else f"{count:,} bytes"


def check(db: Session, owner: str, adding: int, quota: int, field: str | None) -> None:
    """Raise a 413 naming the quota if ``adding`` more bytes would pass it (``quota`` 0: no quota)."""
    if quota <= 0:
        return
    used = used_bytes(db, owner)
    if used + adding <= quota:
        return
    what = f"storing this dataset ({_gb(adding)}) would bring" if adding else "a new dataset would add to"
    raise ApiError(413, f"{what} your datasets' {_gb(used)} past your storage quota of {_gb(quota)} "
                        f"({SETTING}); delete datasets you no longer need", field,
                   extra={"used_bytes": used, "quota_bytes": quota})


def lock_owner(db: Session, owner: str) -> None:
    """Serialise quota decisions of one owner until this transaction ends. PostgreSQL: a transaction-level
    advisory lock on the owner (other owners never wait). SQLite: the database's write lock, taken by a
    write that changes nothing (a deferred transaction would let two readers pass the check)."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                   {"key": f"glai-quota:{owner}"})
    else:
        db.execute(text("UPDATE datasets SET owner = owner WHERE 0 = 1"))


def reserve(db: Session, owner: str, adding: int, quota: int, field: str | None) -> None:
    """``check`` under ``lock_owner``: call it in the transaction that then inserts the row and commits."""
    if quota <= 0:
        return
    lock_owner(db, owner)
    check(db, owner, adding, quota, field)
