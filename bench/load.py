"""Load benchmark (not a test): many clients polling job status and listing jobs while jobs train.

By default it brings up the whole service on loopback: a fresh PostgreSQL database (dropped at the end),
a private ``redis-server`` on a free port, the real API under uvicorn and one real Celery worker running
a few jobs; then ``--clients`` concurrent ``httpx.AsyncClient``s poll ``GET /v1/jobs/{id}`` and
``GET /v1/jobs`` for ``--duration`` seconds. Reports per endpoint: requests, errors, throughput and
p50/p95/p99/max latency. ``--url URL --key KEY --job-ids ...`` targets a running service instead.

    .venv/bin/python -m bench.load --clients 200 --duration 20
    .venv/bin/python -m bench.load --mode status --jobs 2 --clients 200 --interval 1   # issue 16's target
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import statistics
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench.service_stack import Stack, start_stack

# A few seconds of training per job on two shared cores, so jobs run while the load runs.
JOB_CONFIG: dict[str, Any] = {
    "architecture": {"hidden": [16]},
    "structural": {"max_epochs": 150, "min_epochs": 1, "threshold": 0.0, "batch_size": 64, "probe_size": 200},
    "quantitative": {"epochs": 5, "batch_size": 256, "ridge_lambda_search": 0},
    "pruning": {"enabled": True, "sparsities": [0.5], "finetune_epochs": 1},
    "baseline": {"max_epochs": 5, "batch_size": 256},
    "seed": 0,
    "device": "auto",
}


def _insert_jobs(database_url: str, storage_dir: Path, owner: str, n_jobs: int, n_finished: int) -> list[str]:
    """One digits dataset, ``n_jobs`` queued jobs and ``n_finished`` succeeded ones (a realistic list)."""
    from sqlalchemy.orm import sessionmaker

    from glai_common.db import make_engine
    from glai_common.models import Dataset, Job
    from glai_core.data import builtin, save_canonical

    data = builtin("digits")
    dataset_id = uuid.uuid4().hex
    save_canonical(storage_dir / f"datasets/{dataset_id}", data)
    engine = make_engine(database_url)
    try:
        with sessionmaker(bind=engine).begin() as session:
            session.add(Dataset(id=dataset_id, owner=owner, name="digits", kind="features", source="builtin",
                                file_format="builtin", sha256="0" * 64, size_bytes=1, n_samples=len(data.y),
                                n_features=data.n_features, n_classes=data.n_classes,
                                class_names=list(data.class_names), storage_key=f"datasets/{dataset_id}"))
            session.flush()
            ids = []
            for i in range(n_jobs + n_finished):
                job = Job(owner=owner, dataset_id=dataset_id, time_limit_s=3600,
                          spec={"config": JOB_CONFIG, "backbone": None, "validation_fraction": 0.2},
                          state="queued" if i < n_jobs else "succeeded", progress=0.0 if i < n_jobs else 1.0)
                session.add(job)
                session.flush()
                ids.append(job.id)
            return ids
    finally:
        engine.dispose()


def limited_app() -> Any:
    """uvicorn factory for ``--thread-limit``: the real app, with the thread pool that runs its sync
    endpoints and dependencies capped at ``GLAI_BENCH_THREADS`` (at most the database pool: 5 + 10).

    A candidate fix demonstrated by the benchmark, not a product change: with anyio's default of 40
    threads and SQLAlchemy's default pool of 15, more than ~40 concurrent requests starve the pool
    (threads wait 30 s for a connection while the ones holding connections wait for a thread)."""
    import anyio.to_thread

    from api.main import create_app

    app = create_app()
    tokens = int(os.environ.get("GLAI_BENCH_THREADS", "15"))
    configured = False

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        nonlocal configured
        if not configured:
            anyio.to_thread.current_default_thread_limiter().total_tokens = tokens
            configured = True
        await app(scope, receive, send)

    return wrapped


def start_service(n_jobs: int, n_finished: int, api_workers: int, thread_limit: int | None = None,
                  worker_nice: int | None = None, training_workers: int = 1) -> tuple[Stack, list[str]]:
    """The stack with a realistic job list; ``n_jobs`` of them are sent to the ``training_workers``
    workers (one job each at a time). ``worker_nice``: their GLAI_WORKER_NICE (None: the default)."""
    from glai_common.queue import QUEUE, TASK_RUN_JOB, make_celery
    from glai_common.settings import Settings

    env = {"OMP_NUM_THREADS": "1", "GLAI_BENCH_THREADS": str(thread_limit or 0)}
    if worker_nice is not None:
        env["GLAI_WORKER_NICE"] = str(worker_nice)
    stack = start_stack(env,
                        keep_logs="glai-bench", api_workers=api_workers, training_workers=training_workers,
                        api_app="bench.load:limited_app" if thread_limit else "api.main:create_app")
    try:
        ids = _insert_jobs(stack.database_url, stack.data_dir / "storage", "bench", n_jobs, n_finished)
        settings = Settings(database_url=stack.database_url, broker_url=stack.broker_url,
                            data_dir=stack.data_dir)
        broker = make_celery("glai-bench", settings)  # explicit settings: never the cached global ones
        for job_id in ids[:n_jobs]:
            broker.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE)
        return stack, ids
    except BaseException:
        stack.close()
        raise


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    not_modified: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sent_at: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # monotonic
    outcomes: dict[str, list[str | None]] = field(default_factory=lambda: defaultdict(list))  # None: ok
    loop_lag: list[tuple[float, float]] = field(default_factory=list)  # (when, how late) of the loop

    def record(self, endpoint: str, started: float, outcome: str | None) -> None:
        """One answer (or failure) that took since ``started`` (perf_counter)."""
        self.latencies[endpoint].append(time.perf_counter() - started)
        self.sent_at[endpoint].append(time.monotonic())
        self.outcomes[endpoint].append(outcome)
        if outcome is not None:
            self.errors[endpoint][outcome] += 1


def poll_client(base: str, key: str) -> httpx.AsyncClient:
    """One poller's client, one connection. Made before the clock starts: building 200 of them (each loads
    the CA bundle) takes the generator over a CPU-second, which real clients spend on their own machines;
    opening the connection stays inside the run."""
    return httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30.0,
                             limits=httpx.Limits(max_connections=1))


async def poll_loop(client: httpx.AsyncClient, job_ids: list[str], stop_at: float, stats: Stats, seed: int,
                    mode: str, interval_s: float) -> None:
    """One client polling one job every ``interval_s`` on a fixed schedule (a late answer does not delay
    the next poll's due time, so the offered rate stays clients / interval): ``full`` reads
    ``GET /v1/jobs/{id}`` as a naive poller does; ``status`` reads ``GET /v1/jobs/{id}/status`` and
    revalidates with ``If-None-Match`` (a 304 is an answer)."""
    rng = random.Random(seed)
    job_id = job_ids[seed % len(job_ids)]
    endpoint = "GET /v1/jobs/{id}/status" if mode == "status" else "GET /v1/jobs/{id}"
    path = f"/v1/jobs/{job_id}/status" if mode == "status" else f"/v1/jobs/{job_id}"
    etag: str | None = None
    async with client:
        due = time.monotonic() + rng.uniform(0.0, interval_s)  # spread the clients over the interval
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            started = time.perf_counter()
            try:
                sent = {"If-None-Match": etag} if etag else {}
                response = await client.get(path, headers=sent)
                ok = response.status_code in (200, 304)
                outcome = None if ok else str(response.status_code)
                if mode == "status" and ok:
                    etag = response.headers.get("ETag", etag)
                    stats.not_modified[endpoint] += response.status_code == 304
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            stats.record(endpoint, started, outcome)
            due += interval_s


async def client_loop(base: str, key: str, job_ids: list[str], stop_at: float, stats: Stats, seed: int,
                      list_share: float) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30.0) as client:
        while time.monotonic() < stop_at:
            if rng.random() < list_share:
                endpoint, path = "GET /v1/jobs", "/v1/jobs?limit=50"
            else:
                endpoint, path = "GET /v1/jobs/{id}", f"/v1/jobs/{rng.choice(job_ids)}"
            started = time.perf_counter()
            try:
                response = await client.get(path)
                outcome = None if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            stats.record(endpoint, started, outcome)
            await asyncio.sleep(rng.uniform(0.0, 0.05))  # a polling client, not a tight loop


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run_load(base: str, key: str, job_ids: list[str], clients: int, duration: float,
                   list_share: float, mode: str = "mixed", interval_s: float = 1.0) -> tuple[Stats, float]:
    stats = Stats()
    pollers = [poll_client(base, key) for _ in range(clients)] if mode != "mixed" else []
    started = time.monotonic()
    stop_at = started + duration
    lag = asyncio.ensure_future(_loop_lag(stats, stop_at))
    if mode == "mixed":
        loops = [client_loop(base, key, job_ids, stop_at, stats, i, list_share) for i in range(clients)]
    else:
        loops = [poll_loop(client, job_ids, stop_at, stats, i, mode, interval_s)
                 for i, client in enumerate(pollers)]
    await asyncio.gather(*loops)
    await lag
    return stats, time.monotonic() - started


async def _loop_lag(stats: Stats, stop_at: float, tick_s: float = 0.01) -> None:
    """How late the load generator's own event loop wakes up: its delays are in every latency it
    measures, so they are reported beside them (``loop lag``)."""
    while time.monotonic() < stop_at:
        due = time.monotonic() + tick_s
        await asyncio.sleep(tick_s)
        stats.loop_lag.append((time.monotonic(), time.monotonic() - due))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process and its threads so far (/proc/<pid>/stat); 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def timeline(stats: Stats, bucket_s: float = 2.0) -> None:
    """p99 per time bucket (when the answers came): shows whether the tail is steady or a burst."""
    for endpoint, values in sorted(stats.latencies.items()):
        times = stats.sent_at[endpoint]
        start = min(times)
        buckets: dict[int, list[float]] = defaultdict(list)
        for at, latency in zip(times, values, strict=True):
            buckets[int((at - start) // bucket_s)].append(latency)
        cells = ", ".join(f"{k * bucket_s:.0f}s: {pct(v, 0.99):.0f}" for k, v in sorted(buckets.items()))
        print(f"{endpoint} p99 ms per {bucket_s:.0f} s: {cells}")
        lags: dict[int, list[float]] = defaultdict(list)
        for at, late in stats.loop_lag:
            lags[int((at - start) // bucket_s)].append(late)
        cells = ", ".join(f"{k * bucket_s:.0f}s: {max(v) * 1000:.0f}" for k, v in sorted(lags.items())
                          if k >= 0)
        print(f"the load generator's own loop lag, max ms per {bucket_s:.0f} s: {cells}")


def steady(stats: Stats, warmup_s: float) -> Stats:
    """The answers sent after the first ``warmup_s`` seconds (every client opens its connection and reads
    its first full body in the first second): the steady state, reported beside the whole run."""
    kept = Stats()
    for endpoint, values in stats.latencies.items():
        start = min(stats.sent_at[endpoint])
        answers = zip(stats.sent_at[endpoint], values, stats.outcomes[endpoint], strict=True)
        for at, latency, outcome in answers:
            if at - start >= warmup_s:
                name = f"{endpoint} after {warmup_s:g} s"
                kept.latencies[name].append(latency)
                kept.sent_at[name].append(at)
                kept.outcomes[name].append(outcome)
                if outcome is not None:
                    kept.errors[name][outcome] += 1
    return kept


def report(stats: Stats, elapsed: float, clients: int) -> list[dict[str, Any]]:
    rows = []
    for endpoint, values in sorted(stats.latencies.items()):
        errors = dict(stats.errors.get(endpoint, {}))
        rows.append({"endpoint": endpoint, "requests": len(values), "errors": sum(errors.values()),
                     "error_kinds": errors, "rps": len(values) / elapsed, "p50_ms": pct(values, 0.50),
                     "p95_ms": pct(values, 0.95), "p99_ms": pct(values, 0.99), "max_ms": max(values) * 1000,
                     "mean_ms": statistics.fmean(values) * 1000,
                     "not_modified": stats.not_modified.get(endpoint, 0)})
    print(f"\n{clients} clients, {elapsed:.1f} s")
    print("| endpoint | requests | 304s | errors | req/s | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        not_modified = "" if r["endpoint"].endswith(" s") else r["not_modified"]
        print(f"| {r['endpoint']} | {r['requests']} | {not_modified} | {r['errors']} | {r['rps']:.0f} | "
              f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} |")
        if r["error_kinds"]:
            print(f"|   errors: {r['error_kinds']} |")
    return rows


def job_states(database_url: str, job_ids: list[str]) -> dict[str, int]:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from glai_common.db import make_engine
    from glai_common.models import Job

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.execute(select(Job.state, func.count()).where(Job.id.in_(job_ids))
                                   .group_by(Job.state)).all()
        return {state: int(count) for state, count in rows}
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--list-share", type=float, default=0.2, help="Fraction of requests that list jobs.")
    parser.add_argument("--jobs", type=int, default=4, help="Jobs the worker trains during the load.")
    parser.add_argument("--finished", type=int, default=60, help="Finished jobs in the list.")
    parser.add_argument("--structural-epochs", type=int, default=150,
                        help="Each job's structural epochs (all of them run): 3000 keeps two jobs training "
                             "through a 20 s load on two cores.")
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--training-workers", type=int, default=1,
                        help="Worker processes training jobs at once (one job each).")
    parser.add_argument("--worker-nice", type=int, default=None,
                        help="The worker's GLAI_WORKER_NICE (default: the service's, 10); 0: no yielding.")
    parser.add_argument("--thread-limit", type=int,
                        help="Cap the API's sync thread pool (see limited_app); default: the app as is.")
    parser.add_argument("--url", help="Target a running API instead of starting one.")
    parser.add_argument("--key", help="API key for --url.")
    parser.add_argument("--job-ids", nargs="*", default=[], help="Job ids to poll with --url.")
    parser.add_argument("--mode", choices=["mixed", "full", "status"], default="mixed",
                        help="mixed: poll and list with 0-50 ms think time (as much load as the API takes); "
                             "full / status: each client polls one job every --interval s on a schedule, "
                             "GET /v1/jobs/{id} or the lean GET /v1/jobs/{id}/status with If-None-Match.")
    parser.add_argument("--interval", type=float, default=1.0, help="Seconds between one client's polls.")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="Also report the answers after this many seconds (0: the whole run only).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)
    JOB_CONFIG["structural"].update(max_epochs=args.structural_epochs, min_epochs=args.structural_epochs,
                                    patience=args.structural_epochs)

    service: Stack | None = None
    if args.url:
        if not args.key or not args.job_ids:
            parser.error("--url needs --key and --job-ids")
        base, key, job_ids = args.url, args.key, args.job_ids
    else:
        service, job_ids = start_service(args.jobs, args.finished, args.api_workers, args.thread_limit,
                                         args.worker_nice, args.training_workers)
        base, key = service.url, service.key
    try:
        before = job_states(service.database_url, job_ids) if service else {}
        # Pollers watch the jobs being trained (the first --jobs); the mixed load also reads finished ones.
        polled = job_ids[:max(args.jobs, 1)] if service and args.mode != "mixed" else job_ids
        # The generator's own collector pauses (hundreds of ms with 200 clients' objects) would show up as
        # server latency: it runs without it, and its loop lag is reported beside the figures.
        gc.collect()
        gc.disable()
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        served = {"API": service.api.pid} if service else {}
        if service:
            served.update({f"worker {i}": p.pid for i, p in enumerate(service.workers)})
        served_before = {name: process_cpu_s(pid) for name, pid in served.items()}
        stats, elapsed = uvloop.run(run_load(base, key, polled, args.clients, args.duration, args.list_share,
                                              args.mode, args.interval))
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        client_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        gc.enable()
        rows = report(stats, elapsed, args.clients)
        if args.warmup > 0:
            rows += report(steady(stats, args.warmup), elapsed - args.warmup, args.clients)
        timeline(stats)
        print(f"the load generator itself used {client_cpu:.1f} CPU-s ({client_cpu / elapsed:.2f} cores)")
        for name, pid in served.items():  # the worker's share shows that a job trained through the run
            used = process_cpu_s(pid) - served_before[name]
            print(f"the {name} process used {used:.1f} CPU-s ({used / elapsed:.2f} cores)")
        after = job_states(service.database_url, job_ids) if service else {}
        if service:
            print(f"\njob states before the load: {before}; after: {after}")
        if args.json:
            args.json.write_text(json.dumps({"clients": args.clients, "duration_s": elapsed, "rows": rows,
                                             "jobs_before": before, "jobs_after": after}, indent=2))
    finally:
        if service is not None:
            service.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
