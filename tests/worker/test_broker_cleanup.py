"""The reaper's broker clean-up on the real transports (Redis and the embedded SQL broker): messages of
final or deleted jobs go, a message of a job still to run stays. (A killed worker's unacknowledged
message, on Redis, is covered with real workers in test_worker_e2e.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from glai_common import jobs
from glai_common.migrate import upgrade
from glai_common.models import new_id
from glai_common.queue import QUEUE, TASK_RUN_JOB, make_celery
from glai_common.settings import Settings
from tests.worker.conftest import add_dataset, add_job
from worker.broker_cleanup import job_of
from worker.context import WorkerContext
from worker.reaper import discard_final_messages


@pytest.fixture(params=["sqla+sqlite", "redis"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqla+sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def ctx(tmp_path: Path, broker_url: str) -> Iterator[WorkerContext]:
    url = f"sqlite:///{tmp_path / 'glai.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path, database_url=url, broker_url=broker_url)
    context = WorkerContext.from_settings(settings)  # the real broker, as in a worker
    yield context
    context.dispose()


def _waiting(broker_url: str) -> list[str | None]:
    """The job ids of the messages the broker holds, read straight from its storage."""
    if broker_url.startswith("redis"):
        import redis

        return [job_of(raw) for raw in redis.Redis.from_url(broker_url).lrange(QUEUE, 0, -1)]
    engine = create_engine(broker_url.removeprefix("sqla+"))
    with engine.connect() as conn:
        payloads = conn.execute(text("SELECT payload FROM kombu_message ORDER BY id")).scalars().all()
    engine.dispose()
    return [job_of(payload) for payload in payloads]


def test_messages_of_final_and_deleted_jobs_are_discarded(ctx: WorkerContext, broker_url: str) -> None:
    with ctx.session() as session:
        dataset = add_dataset(session)
        cancelled, waiting = add_job(session, dataset.id).id, add_job(session, dataset.id).id
        jobs.request_cancel(session, cancelled)
    deleted = new_id()
    celery = make_celery("cleanup-test", Settings(broker_url=broker_url))
    for job_id in (cancelled, waiting, deleted, cancelled):
        celery.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE)
    celery.close()
    assert sorted(map(str, _waiting(broker_url))) == sorted([cancelled, cancelled, waiting, deleted])
    assert discard_final_messages(ctx) == 3
    assert _waiting(broker_url) == [waiting]
    assert discard_final_messages(ctx) == 0
