"""Numbers behind the API's ``/metrics`` that many processes produce: kept in the database, so one
scrape of any API process sees the whole fleet, and a restart loses nothing.

* Duration histograms (``observe``): a job's time from its first start to its final state (recorded by
  ``glai_common.states.transition`` in the same transaction), and each phase's time within an attempt
  (recorded by the worker's reporter). One upsert per observation on a handful of rows; counts only grow,
  as Prometheus expects of a histogram.
* Worker heartbeats (``beat``): every worker's reaper writes its node name, pools and the time on each
  pass, busy or idle, so a pool without a live worker shows.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from glai_common.models import DurationStat, WorkerHeartbeat, utcnow

# Seconds to a day: a test job and a day-long training each land in a bucket of their own.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
                    28800.0, 86400.0, float("inf"))
JOB, PHASE = "job", "phase"
FORGET_WORKERS_AFTER = timedelta(days=1)


def _insert(session: Session):  # type: ignore[no-untyped-def]
    from glai_common.jobs import dialect_insert

    return dialect_insert(session)


def observe(session: Session, metric: str, label: str, seconds: float) -> None:
    """Count one duration (negative ones, from clock steps, count as 0)."""
    value = max(0.0, float(seconds))
    bucket = bisect.bisect_left(DURATION_BUCKETS, value)
    stmt = _insert(session)(DurationStat.__table__).values(metric=metric, label=label[:32], bucket=bucket,
                                                           count=1, sum_s=value)
    table = DurationStat.__table__.c
    session.execute(stmt.on_conflict_do_update(
        index_elements=["metric", "label", "bucket"],
        set_={"count": table.count + 1, "sum_s": table.sum_s + stmt.excluded.sum_s}))


@dataclass
class Histogram:
    """Cumulative counts per ``DURATION_BUCKETS`` upper bound, the total count and the sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    sum_s: float = 0.0

    @property
    def count(self) -> int:
        return self.buckets[-1]

    def cumulative(self) -> list[tuple[str, int]]:
        bounds = ["+Inf" if le == float("inf") else repr(le) for le in DURATION_BUCKETS]
        return list(zip(bounds, self.buckets, strict=True))


def histograms(session: Session, metric: str) -> dict[str, Histogram]:
    """Per label, the histogram of ``metric``."""
    stat = DurationStat
    rows = session.execute(select(stat.label, stat.bucket, stat.count, stat.sum_s)
                           .where(stat.metric == metric)).all()
    raw: dict[str, list[int]] = defaultdict(lambda: [0] * len(DURATION_BUCKETS))
    sums: dict[str, float] = defaultdict(float)
    for row in rows:
        if 0 <= row.bucket < len(DURATION_BUCKETS):
            raw[row.label][row.bucket] += int(row.count)
            sums[row.label] += float(row.sum_s)
    result: dict[str, Histogram] = {}
    for label, counts in raw.items():
        running, cumulative = 0, []
        for n in counts:
            running += n
            cumulative.append(running)
        result[label] = Histogram(cumulative, sums[label])
    return result


def beat(session: Session, worker: str, queues: list[str], now: datetime | None = None) -> None:
    """This worker is alive now; workers silent for a day are forgotten."""
    now = now or utcnow()
    stmt = _insert(session)(WorkerHeartbeat.__table__).values(worker=worker[:255], queues=",".join(queues),
                                                              started_at=now, seen_at=now)
    session.execute(stmt.on_conflict_do_update(index_elements=["worker"],
                                               set_={"seen_at": now, "queues": stmt.excluded.queues}))
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < now - FORGET_WORKERS_AFTER))


def workers(session: Session) -> list[WorkerHeartbeat]:
    return list(session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.worker)))
