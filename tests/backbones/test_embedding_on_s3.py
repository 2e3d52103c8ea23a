"""The embedding phase on object storage (a real S3 endpoint): the raw upload is staged from the bucket,
the features are published to it (``meta.json`` last) and kept in the machine's staging cache, and a
worker on another machine reuses them from the bucket without embedding again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from glai_common.migrate import upgrade
from glai_common.models import Dataset, FeatureCache, Job
from glai_common.s3_storage import S3Storage
from glai_common.settings import Settings
from glai_core.hooks import Event
from tests.backbones import corpus
from tests.s3_server import S3Endpoint
from worker.context import WorkerContext
from worker.datasets import DatasetInfo, load_training_data
from worker.hooks import DatabaseHooks
from worker.reporter import JobReporter
from worker.staging import StagingCache


class Recording(DatabaseHooks):
    def __init__(self, reporter: JobReporter) -> None:
        super().__init__(reporter, None, time.monotonic() + 600)
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        super().on_event(event)


@pytest.fixture
def machines(tmp_path: Path, s3: S3Endpoint) -> Iterator[tuple[WorkerContext, WorkerContext]]:
    """Two worker contexts with their own data directories, one database and one bucket."""
    url = f"sqlite:///{tmp_path / 'glai.db'}"
    upgrade(url)
    bucket = s3.new_bucket()
    made = [WorkerContext.from_settings(Settings(data_dir=tmp_path / name, database_url=url,
                                                 broker_url="memory://", **s3.settings(bucket)),  # type: ignore[arg-type]
                                        enqueue=lambda _job_id: None) for name in ("a", "b")]
    yield made[0], made[1]
    for ctx in made:
        ctx.dispose()


def _text_dataset(ctx: WorkerContext, scratch: Path) -> tuple[DatasetInfo, str]:
    rows = [(t, "positive") for t in corpus.POSITIVE] + [(t, "negative") for t in corpus.NEGATIVE]
    with ctx.session() as session:
        dataset = Dataset(owner="alice", name="reviews", kind="text", source="upload", file_format="csv",
                          text_column="review", label_column="sentiment", sha256="0" * 64, size_bytes=1,
                          n_samples=len(rows), n_features=384, n_classes=2,
                          class_names=["negative", "positive"], storage_key="x")
        session.add(dataset)
        session.flush()
        dataset.storage_key = f"datasets/{dataset.id}"
        job = Job(owner="alice", dataset_id=dataset.id, time_limit_s=600, spec={"backbone": "minilm"})
        session.add(job)
        session.flush()
        raw = scratch / "raw.csv"
        corpus.write_text_csv(raw, rows)
        ctx.storage.put_file(f"{dataset.storage_key}/raw.csv", raw)
        return DatasetInfo(dataset.id, "text", "csv", "review", "sentiment", dataset.storage_key), job.id


def test_features_are_published_to_the_bucket_and_reused_on_another_machine(
        machines: tuple[WorkerContext, WorkerContext], tmp_path: Path) -> None:
    first, second = machines
    dataset, job_id = _text_dataset(first, tmp_path)
    hooks = Recording(JobReporter(first, job_id, "machine-a"))
    loaded = load_training_data(first, dataset, "minilm", hooks, "cpu")
    assert [e.step for e in hooks.events] == [1, 2]  # embedded here, batch by batch

    store = first.storage
    assert isinstance(store, S3Storage)
    key = f"features/{dataset.id}/minilm"
    assert {o.key.rsplit("/", 1)[1] for o in store.list_prefix(key)} == {"X.npy", "y.npy", "meta.json"}
    assert all(store.stat(o.key).sha256 for o in store.list_prefix(key))  # type: ignore[union-attr]
    with first.session() as session:
        assert session.scalar(select(FeatureCache.storage_key)
                              .where(FeatureCache.dataset_id == dataset.id)) == key
    cache = first.staging
    assert isinstance(cache, StagingCache)
    staged = {entry.name for entry in cache.entries_by_use()}
    assert len(staged) == 2  # the raw upload and the published features, nothing else
    assert not (tmp_path / "a" / "storage").exists()

    again = Recording(JobReporter(second, job_id, "machine-b"))
    reused = load_training_data(second, dataset, "minilm", again, "cpu")
    assert again.events == []  # no embedding on the second machine: the bucket had the features
    assert (reused.data.x[:] == loaded.data.x[:]).all() and reused.data.class_names == loaded.data.class_names
    other = second.staging
    assert isinstance(other, StagingCache) and len(other.entries_by_use()) == 1  # only the features
