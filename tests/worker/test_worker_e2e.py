"""A real Celery worker subprocess runs jobs end to end: Redis + PostgreSQL, and the embedded SQLite setup.

Covers success (curves, artifacts with matching sha256, summary), cancel while running, and a worker
killed with SIGKILL mid-training whose job the next worker's reaper requeues and resumes from the
checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from glai_common import jobs
from glai_common.db import make_engine
from glai_common.migrate import upgrade
from glai_common.models import Artifact, CurvePoint, JobLogLine, JobTransition
from glai_common.storage import sha256_file
from glai_core.artifacts import load_model
from tests.worker.export_checks import check_config_file, check_onnx_copy
from tests.worker.harness import (
    Backend,
    WorkerProcess,
    insert_digits_job,
    job_state,
    tiny_config,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SUMMARY_KEYS = {"glai_accuracy", "structure_accuracy", "warm_start_accuracy", "baseline_accuracy", "pruned",
                "structural_epochs", "baseline_epochs", "glai_seconds", "baseline_seconds", "target_accuracy",
                "glai_time_to_target_s", "baseline_time_to_target_s", "speedup", "reduction_factor",
                "glai_hidden", "reference_hidden", "mlp_params", "glai_trainable_params", "structure_params",
                "stopped_by", "training_precision"}
# Long enough to act on mid-phase (a few seconds of structural epochs), short enough for CI.
# far longer than the test waits: neither the stability rule nor the validation plateau may end it
LONG_STRUCTURAL = {"max_epochs": 1000, "threshold": 0.0, "batch_size": 64, "patience": 100_000}


def _sqlite_backend(tmp_path: Path) -> Backend:
    return Backend(f"sqlite:///{tmp_path / 'glai.db'}", f"sqla+sqlite:///{tmp_path / 'broker.db'}", tmp_path)


@pytest.fixture(params=["redis-postgres", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    return Backend(request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url"), tmp_path)


@pytest.fixture
def redis_postgres(postgres_url: str, redis_url: str, tmp_path: Path) -> Backend:
    return Backend(postgres_url, redis_url, tmp_path)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    return _sqlite_backend(tmp_path)


class Deployment:
    """The test's view of a running service: sessions, enqueue through the real client, workers."""

    def __init__(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        from glai_common import queue, settings

        self.backend = backend
        upgrade(backend.database_url)
        self.engine = make_engine(backend.database_url)
        self.sessions: sessionmaker[Session] = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.storage_dir = backend.data_dir / "storage"
        self.workers: list[WorkerProcess] = []
        # enqueue_job reads the broker from the cached settings: point them at this test's broker.
        for key, value in backend.env().items():
            if key.startswith("GLAI_"):
                monkeypatch.setenv(key, value)
        settings.get_settings.cache_clear()
        queue.celery_client.cache_clear()
        self._queue = queue

    def enqueue(self, job_id: str) -> None:
        self._queue.enqueue_job(job_id)

    def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.backend, self.backend.data_dir / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        from glai_common import settings

        for worker in self.workers:
            worker.stop()
        self._queue.celery_client.cache_clear()
        settings.get_settings.cache_clear()
        self.engine.dispose()


@pytest.fixture
def deploy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Backend], Deployment]]:
    made: list[Deployment] = []

    def make(backend: Backend) -> Deployment:
        made.append(Deployment(backend, monkeypatch))
        return made[-1]

    try:
        yield make
    finally:
        for deployment in made:
            deployment.close()


def _final(dep: Deployment, job_id: str, worker: WorkerProcess, timeout: float = 90) -> str:
    return wait_for(lambda: (job := job_state(dep.sessions, job_id)).state in {"succeeded", "failed",
                                                                               "cancelled"} and job.state,
                    timeout, f"job {job_id} to finish", worker)


def _broker_messages(dep: Deployment) -> int:
    """Messages the broker still holds, waiting or taken but unacknowledged (each test has one broker)."""
    url = dep.backend.broker_url
    if url.startswith("redis://"):
        import redis

        client = redis.Redis.from_url(url)
        return int(client.hlen("unacked") + client.llen("glai"))
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url.removeprefix("sqla+"))
    try:
        if not inspect(engine).has_table("kombu_message"):
            return 0
        with engine.connect() as conn:  # kombu's SQL transport hides delivered rows, never deletes them
            return int(conn.execute(text("SELECT count(*) FROM kombu_message")).scalar_one())
    finally:
        engine.dispose()


def _log(dep: Deployment, job_id: str) -> list[str]:
    with dep.sessions() as session:
        return [line.text for line in jobs.read_log(session, job_id, limit=100_000)]


def _curves_by_series(dep: Deployment, job_id: str) -> dict[tuple[str, str], list[int]]:
    with dep.sessions() as session:
        rows = session.execute(select(CurvePoint.phase, CurvePoint.series, CurvePoint.step)
                               .where(CurvePoint.job_id == job_id).order_by(CurvePoint.id)).all()
    curves: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        curves.setdefault((row.phase, row.series), []).append(row.step)
    return curves


def test_worker_runs_a_job_to_success(backend: Backend, deploy: Callable[[Backend], Deployment]) -> None:
    dep = deploy(backend)
    job_id = insert_digits_job(dep.sessions, dep.storage_dir, tiny_config())
    dep.enqueue(job_id)
    worker = dep.start_worker()
    state = _final(dep, job_id, worker)
    job = job_state(dep.sessions, job_id)
    assert state == "succeeded", (job.failure_kind, job.failure_message, "\n".join(_log(dep, job_id)))
    assert job.attempts == 1 and job.progress == 1.0 and job.lease_owner is None
    assert set(job.summary) >= SUMMARY_KEYS
    assert os.getpriority(os.PRIO_PROCESS, worker.proc.pid) == 10  # GLAI_WORKER_NICE's default
    curves = _curves_by_series(dep, job_id)
    for phase in ("structural", "quantitative", "baseline"):
        assert curves[(phase, "val_accuracy")], phase
    assert curves[("pruning", "pruned_accuracy")] == [1]
    with dep.sessions() as session:
        artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        phases = list(session.scalars(select(JobTransition.to_value).where(
            JobTransition.job_id == job_id, JobTransition.field == "phase").order_by(JobTransition.id)))
    models = {"trained", "pruned-50", "baseline"}
    assert set(artifacts) == models | {f"{name}.onnx" for name in models} | {"config.json"}
    for artifact in artifacts.values():
        path = dep.storage_dir / artifact.storage_key
        suffix = "" if "." in artifact.name else ".safetensors"
        assert artifact.storage_key == f"jobs/{job_id}/{artifact.name}{suffix}"
        assert sha256_file(path) == artifact.sha256 and path.stat().st_size == artifact.size_bytes
    dataset = dep.storage_dir / f"datasets/{job.dataset_id}"
    for name in models:  # each ONNX copy predicts what its model predicts, on rows it never trained on
        check_onnx_copy(dep.storage_dir, artifacts[name], artifacts[f"{name}.onnx"], dataset,
                        validation_fraction=0.2, seed=0)
    check_config_file(dep.storage_dir / artifacts["config.json"].storage_key, job.summary, tiny_config())
    _, metadata = load_model(dep.storage_dir / artifacts["trained"].storage_key)
    assert metadata["architecture"]["kind"] == "glai" and len(metadata["class_names"]) == 10
    assert phases == ["structural", "quantitative", "pruning", "baseline", "exporting"]
    assert any(line.startswith("[structural] step 1/") for line in _log(dep, job_id))
    # The job is final: its message is gone from the broker at the next reaper pass, not kept for days.
    wait_for(lambda: _broker_messages(dep) == 0, 15, "the broker to drop the finished job's message", worker)


def test_cancel_while_running(sqlite_backend: Backend, deploy: Callable[[Backend], Deployment]) -> None:
    dep = deploy(sqlite_backend)
    job_id = insert_digits_job(dep.sessions, dep.storage_dir, tiny_config(structural=LONG_STRUCTURAL))
    dep.enqueue(job_id)
    worker = dep.start_worker()
    wait_for(lambda: len(_curves_by_series(dep, job_id).get(("structural", "val_accuracy"), [])) >= 3,
             60, "structural epochs", worker)
    with dep.sessions.begin() as session:
        assert jobs.request_cancel(session, job_id).state == "cancelling"  # type: ignore[union-attr]
    assert _final(dep, job_id, worker, timeout=30) == "cancelled"
    job = job_state(dep.sessions, job_id)
    assert job.cancel_requested and job.failure_kind is None
    assert not (dep.storage_dir / "jobs" / job_id / "checkpoints").exists()  # cannot be resumed: removed
    assert len(_curves_by_series(dep, job_id)[("structural", "val_accuracy")]) < LONG_STRUCTURAL["max_epochs"]
    with dep.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Artifact)
                              .where(Artifact.job_id == job_id)) == 0


def test_killed_worker_is_reaped_and_the_job_resumes(redis_postgres: Backend,
                                                     deploy: Callable[[Backend], Deployment]) -> None:
    dep = deploy(redis_postgres)
    config = tiny_config(structural=LONG_STRUCTURAL, pruning={"enabled": False})
    job_id = insert_digits_job(dep.sessions, dep.storage_dir, config)
    dep.enqueue(job_id)
    first = dep.start_worker()
    checkpoint = dep.storage_dir / "jobs" / job_id / "checkpoints" / "structural.safetensors"
    wait_for(lambda: checkpoint.exists()
             and len(_curves_by_series(dep, job_id).get(("structural", "val_accuracy"), [])) >= 3,
             60, "a structural checkpoint", first)
    first.kill()
    killed_at = max(_curves_by_series(dep, job_id)[("structural", "val_accuracy")])
    assert job_state(dep.sessions, job_id).state == "running"  # nobody knows yet

    second = dep.start_worker()
    assert _final(dep, job_id, second, timeout=90) == "succeeded", "\n".join(_log(dep, job_id))
    job = job_state(dep.sessions, job_id)
    assert job.attempts == 2
    with dep.sessions() as session:
        states = list(session.execute(select(JobTransition.from_value, JobTransition.to_value).where(
            JobTransition.job_id == job_id, JobTransition.field == "state").order_by(JobTransition.id)))
    assert [tuple(s) for s in states] == [("queued", "running"), ("running", "queued"), ("queued", "running"),
                                          ("running", "succeeded")]
    for (phase, series), steps in _curves_by_series(dep, job_id).items():
        assert steps == sorted(set(steps)), (phase, series)  # unique, in step order
    structural = _curves_by_series(dep, job_id)[("structural", "val_accuracy")]
    assert structural[-1] == LONG_STRUCTURAL["max_epochs"]
    # The second attempt continued after the checkpoint instead of starting over.
    log = _log(dep, job_id)
    second_attempt = log[next(i for i, line in enumerate(log) if line.startswith("attempt 2")):]
    resumed_steps = [int(line.split()[2].split("/")[0]) for line in second_attempt
                     if line.startswith("[structural] step ")]
    assert resumed_steps and resumed_steps[0] > killed_at
    assert not checkpoint.parent.exists()  # the job succeeded: its checkpoints are removed
    with dep.sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobLogLine)
                              .where(JobLogLine.job_id == job_id)) == len(log)
    # The killed worker's message, never acknowledged, is discarded now that the job is final instead of
    # waiting out Redis' visibility timeout (49 h) in the unacked hash.
    wait_for(lambda: _broker_messages(dep) == 0, 15, "the killed worker's message to be discarded", second)
