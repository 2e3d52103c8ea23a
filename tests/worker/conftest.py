"""Worker test fixtures: a migrated database per test, on SQLite and (when present) PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from glai_common.db import make_engine
from glai_common.migrate import upgrade
from glai_common.models import Dataset, Job


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The schema built by the migrations, never by ``create_all``."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'glai.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def add_dataset(session: Session, **fields: Any) -> Dataset:
    values: dict[str, Any] = {"owner": "alice", "name": "digits", "kind": "features", "source": "builtin",
                              "file_format": "builtin", "sha256": "0" * 64, "size_bytes": 1,
                              "n_samples": 10, "n_features": 4, "n_classes": 2, "class_names": ["a", "b"],
                              "storage_key": "datasets/x"}
    values.update(fields)
    dataset = Dataset(**values)
    session.add(dataset)
    session.flush()
    dataset.storage_key = f"datasets/{dataset.id}"
    return dataset


def add_job(session: Session, dataset_id: str, **fields: Any) -> Job:
    values: dict[str, Any] = {"owner": "alice", "dataset_id": dataset_id, "spec": {"config": {}},
                              "time_limit_s": 3600}
    values.update(fields)
    job = Job(**values)
    session.add(job)
    session.flush()
    return job


@pytest.fixture
def job_id(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        dataset = add_dataset(session)
        return add_job(session, dataset.id).id
