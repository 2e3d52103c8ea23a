"""``GET /metrics`` in the Prometheus text format, from the official client library.

Two kinds of numbers:

* this API process's request latencies (``glai_http_request_duration_seconds``), timed by ``RequestTimer``
  around every request and labelled by the route's template (``/v1/jobs/{job_id}``), never the raw path,
  so ids do not explode the series;
* the fleet's state, read from the database at scrape time (``FleetCollector``): jobs by state and queue,
  queue depth per pool and priority, job and phase duration histograms (``glai_common.metrics_store``),
  worker heartbeats, and webhook deliveries. Any API process answers the same, whichever one is scraped.

Counts only: no ids, names or owners. ``GLAI_METRICS_TOKEN`` puts it behind a bearer token.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError
from api.schemas import ErrorBody
from glai_common import metrics_store
from glai_common.jobs import ACTIVE_STATES, as_utc
from glai_common.models import Job, WebhookDelivery, utcnow
from glai_common.queue import PRIORITIES
from glai_common.settings import Settings
from glai_common.states import QUEUED, STATES
from glai_common.webhooks import DELIVERY_STATES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), or ``unmatched`` (404s, probes of random
    paths): bounded labels whatever clients send. The router leaves the matched route in the scope with its
    path relative to where it was included, so the literal prefix it was included under is put back: the
    part of the request path before the route's own pattern matches."""
    route = scope.get("route")
    template, pattern = getattr(route, "path", None), getattr(route, "path_regex", None)
    path = scope.get("path", "")
    if not template or pattern is None:
        return "unmatched"
    for cut in [i for i, ch in enumerate(path) if ch == "/"]:
        if pattern.match(path[cut:]):
            return path[:cut] + str(template)
    return str(template)


class RequestTimer:
    """ASGI middleware: seconds from a request's arrival until its response has been sent."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            method = scope.get("method", "")
            self.histogram.labels(method=method if method in KNOWN_METHODS else "other",
                                  route=route_template(scope),
                                  status=str(status)).observe(time.perf_counter() - started)


def _seconds_since(value: datetime | None, now: datetime) -> float:
    at = as_utc(value)
    return 0.0 if at is None else max(0.0, (now - at).total_seconds())


class FleetCollector(Collector):
    """Reads the database on every scrape (a few aggregate queries)."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings

    def describe(self) -> list[Metric]:
        return []  # nothing at registration: the database is only read when scraped

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        with self.sessions() as session:
            yield from self._jobs(session)
            yield from self._durations(session)
            yield from self._workers(session, now)
            yield from self._running(session, now)
            yield from self._deliveries(session)

    def _pools(self, seen: set[str]) -> list[str]:
        return list(dict.fromkeys([*self.settings.queues, *sorted(seen)]))

    def _jobs(self, session: Session) -> Iterator[Metric]:
        rows = session.execute(select(Job.state, Job.queue, Job.priority, func.count())
                               .group_by(Job.state, Job.queue, Job.priority)).all()
        pools = self._pools({row.queue for row in rows})
        by_state = GaugeMetricFamily("glai_jobs", "Jobs by state and queue (all owners).",
                                     labels=["state", "queue"])
        depth = GaugeMetricFamily("glai_queue_depth", "Queued jobs waiting for a worker, per queue and "
                                  "priority.", labels=["queue", "priority"])
        counts: dict[tuple[str, str, str], int] = {(r.state, r.queue, r.priority): int(r[3]) for r in rows}
        for state in STATES:
            for pool in pools:
                by_state.add_metric([state, pool], sum(n for (s, q, _), n in counts.items()
                                                       if s == state and q == pool))
        for pool in pools:
            for priority in PRIORITIES:
                depth.add_metric([pool, priority], counts.get((QUEUED, pool, priority), 0))
        yield by_state
        yield depth

    def _durations(self, session: Session) -> Iterator[Metric]:
        for metric, name, text, label in (
                (metrics_store.JOB, "glai_job_duration_seconds",
                 "Jobs from their first start to their final state, by that state.", "state"),
                (metrics_store.PHASE, "glai_phase_duration_seconds",
                 "Finished phases, within one attempt, by phase.", "phase")):
            family = HistogramMetricFamily(name, text, labels=[label])
            for value, histogram in sorted(metrics_store.histograms(session, metric).items()):
                family.add_metric([value], histogram.cumulative(), histogram.sum_s)
            yield family

    def _workers(self, session: Session, now: datetime) -> Iterator[Metric]:
        rows = metrics_store.workers(session)
        last = GaugeMetricFamily("glai_worker_last_heartbeat_timestamp_seconds", "Unix time each worker last "
                                 "reported alive (every reaper pass, busy or idle).", labels=["worker"])
        live = GaugeMetricFamily("glai_workers_alive", "Workers per queue heard of within a lease "
                                 "(GLAI_WORKER_LEASE_S).", labels=["queue"])
        alive: dict[str, int] = dict.fromkeys(self.settings.queues, 0)
        for row in rows:
            seen = as_utc(row.seen_at)
            assert seen is not None
            last.add_metric([row.worker], seen.timestamp())
            if _seconds_since(seen, now) <= self.settings.worker_lease_s:
                for pool in filter(None, row.queues.split(",")):
                    alive[pool] = alive.get(pool, 0) + 1
        for pool, n in alive.items():
            live.add_metric([pool], n)
        yield last
        yield live

    def _running(self, session: Session, now: datetime) -> Iterator[Metric]:
        rows = session.execute(select(Job.queue, func.min(Job.updated_at))
                               .where(Job.state.in_(ACTIVE_STATES)).group_by(Job.queue)).all()
        family = GaugeMetricFamily("glai_running_job_heartbeat_age_seconds", "Per queue, the longest time a "
                                   "running job's worker has not renewed its lease (lost above "
                                   "GLAI_WORKER_LEASE_S).", labels=["queue"])
        ages = {row.queue: _seconds_since(row[1], now) for row in rows}
        for pool in self._pools(set(ages)):
            family.add_metric([pool], ages.get(pool, 0.0))
        yield family

    def _deliveries(self, session: Session) -> Iterator[Metric]:
        rows = dict(session.execute(select(WebhookDelivery.state, func.count())
                                    .group_by(WebhookDelivery.state)).all())
        family = GaugeMetricFamily("glai_webhook_deliveries", "Webhook deliveries by state.",
                                   labels=["state"])
        for state in DELIVERY_STATES:
            family.add_metric([state], int(rows.get(state, 0)))
        yield family


def make_registry(sessions: sessionmaker[Session], settings: Settings) -> tuple[CollectorRegistry, Histogram]:
    """A registry of the app's own (tests build many apps in one process), with the request histogram."""
    registry = CollectorRegistry()
    latency = Histogram("glai_http_request_duration_seconds", "API request latency, arrival to response "
                        "sent, by method, route template and status.", ["method", "route", "status"],
                        buckets=LATENCY_BUCKETS, registry=registry)
    registry.register(FleetCollector(sessions, settings))
    return registry, latency


router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"description": "The Prometheus text format, version 0.0.4.",
                             "content": {"text/plain": {"schema": {"type": "string"}}}},
                       401: {"model": ErrorBody,
                             "description": "GLAI_METRICS_TOKEN is set and the bearer token is not it."}})
def metrics(request: Request) -> Response:
    """Jobs by state and queue, queue depth, job and phase durations, request latencies, worker
    heartbeats and webhook deliveries. Open unless GLAI_METRICS_TOKEN is set."""
    services = request.app.state.services
    token = services.settings.metrics_token
    if token:
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "send 'Authorization: Bearer <GLAI_METRICS_TOKEN>'", "Authorization",
                           headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
