"""Two uploads racing for an owner's last bytes: the quota's last check and the insert are one decision
under a per-owner lock, on PostgreSQL (advisory lock) and SQLite (the write lock) alike."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from api.services import quota
from glai_common.db import make_engine
from glai_common.migrate import upgrade
from glai_common.models import Dataset

QUOTA = 1_000


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> sessionmaker[Session]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'quota.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    engine = make_engine(url)
    request.addfinalizer(engine.dispose)
    return sessionmaker(bind=engine)


def _dataset(owner: str, size: int) -> Dataset:
    return Dataset(owner=owner, name="d", file_format="npz", sha256="0" * 64, size_bytes=size,
                   stored_bytes=size, n_samples=1, n_features=1, n_classes=2, storage_key="datasets/x")


def test_a_racing_upload_waits_for_the_first_and_counts_its_bytes(sessions: sessionmaker[Session]) -> None:
    outcome: dict[str, object] = {}

    def second_upload() -> None:
        with sessions() as db:
            try:
                quota.reserve(db, "alice", 600, QUOTA, "file")
                db.add(_dataset("alice", 600))
                db.commit()
                outcome["second"] = "stored"
            except ApiError as exc:
                outcome["second"] = (exc.status_code, exc.extra["used_bytes"])

    with sessions() as first:
        quota.reserve(first, "alice", 600, QUOTA, "file")  # fits: 0 + 600 <= 1000; the lock is held
        racer = threading.Thread(target=second_upload)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive(), f"the second upload decided while the first held the lock: {outcome}"
        first.add(_dataset("alice", 600))
        first.commit()
    racer.join(30)
    assert outcome["second"] == (413, 600)  # it saw the first one's bytes
    with sessions() as db:
        assert quota.used_bytes(db, "alice") == 600


def test_other_owners_are_not_held_up(sessions: sessionmaker[Session]) -> None:
    with sessions() as first:
        quota.reserve(first, "alice", 600, QUOTA, "file")
        if first.get_bind().dialect.name != "postgresql":
            pytest.skip("SQLite has one write lock for the whole database")
        with sessions() as other:
            quota.reserve(other, "bob", 600, QUOTA, "file")  # returns at once: bob's own lock
            other.add(_dataset("bob", 600))
            other.commit()
        first.rollback()


def test_no_quota_takes_no_lock(sessions: sessionmaker[Session]) -> None:
    with sessions() as first, sessions() as second:
        quota.reserve(first, "alice", 10**12, 0, "file")
        quota.reserve(second, "alice", 10**12, 0, "file")  # would wait on a lock if one were taken
