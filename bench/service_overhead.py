"""Service overhead benchmark (not a test): queue latency, and what the worker adds to training time.

Starts the real service (PostgreSQL, Redis, uvicorn, one Celery worker: ``bench.service_stack``) and
prints two tables:

(a) submit-to-running: ``--latency-jobs`` tiny jobs submitted one at a time to an idle worker; latency is
    the job's ``running`` transition minus its ``created_at`` (both written by the service itself).
(b) worker overhead: one mid-sized job (Fashion-MNIST, reference MLP [384], every phase) trained by
    ``glai_core.pipeline.run_pipeline`` in a fresh process with no-op ``Hooks`` and by the service worker
    (``DatabaseHooks``, checkpoints, curve writes), interleaved over ``--rounds`` so drift on the shared
    cores hits every kind; the ratios use each kind's fastest run (the least disturbed). Compared: the
    library's own training clocks (``glai_seconds`` + ``baseline_seconds`` of the summary) and the whole
    run (direct: ``run_pipeline`` wall; service: ``running`` -> ``succeeded``, data loading and export
    included).

    .venv/bin/python -m bench.service_overhead               # 3 min on 2 idle cores, up to 8 loaded
    .venv/bin/python -m bench.service_overhead --quick       # smaller job, fewer latency samples
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.service_stack import REPO, Stack, start_stack, transitions, wait_job, wait_worker_ready
from glai_core.hooks import Hooks

TINY_JOB: dict[str, Any] = {
    "architecture": {"hidden": [8]},
    "structural": {"max_epochs": 1, "min_epochs": 1, "probe_size": 50},
    "quantitative": {"solver": "adam", "epochs": 0},
    "pruning": {"enabled": False},
    "baseline": {"enabled": False},
}
MID_JOB: dict[str, Any] = {
    "architecture": {"hidden": [384]},
    "quantitative": {"solver": "adam", "epochs": 8, "patience": 8},
    "baseline": {"max_epochs": 12, "patience": 12},
    "pruning": {"sparsities": [0.5, 0.9], "finetune_epochs": 1},
    "seed": 0,
}
QUICK_JOB: dict[str, Any] = {**MID_JOB, "architecture": {"hidden": [128]},
                             "baseline": {"max_epochs": 6, "patience": 6}}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(stack: Stack, dataset_id: str, n: int) -> list[float]:
    """Seconds from created_at to the running transition, one job at a time on an idle worker."""
    out = []
    with stack.client() as client:
        for _ in range(n):
            time.sleep(1.0)  # the worker is back to waiting on the queue
            job = client.post("/v1/jobs", json={"dataset_id": dataset_id, **TINY_JOB})
            job_id = job.raise_for_status().json()["id"]
            wait_job(client, job_id, 120, poll=0.2)
            created, rows = transitions(stack.database_url, job_id)
            running = next(at for kind, value, at in rows if kind == "state" and value == "running")
            out.append((running - created).total_seconds())
    return out


class _Checkpointing(Hooks):
    """No-op hooks that still checkpoint every epoch, as the worker's do (to attribute that cost)."""

    def __init__(self, directory: Path) -> None:
        self.checkpoint_dir = directory


def _direct_child(name: str, config: dict[str, Any], checkpoints: bool) -> dict[str, float]:
    import tempfile

    from glai_core.config import TrainConfig
    from glai_core.data import builtin
    from glai_core.pipeline import run_pipeline

    data = builtin(name)
    train_config = TrainConfig.from_dict(config)
    with tempfile.TemporaryDirectory(prefix="glai-ckpt-") as tmp:
        hooks = _Checkpointing(Path(tmp)) if checkpoints else Hooks()
        started = time.monotonic()
        result = run_pipeline(data, train_config, hooks)
        wall = time.monotonic() - started
    return {"library_s": result.summary["glai_seconds"] + (result.summary["baseline_seconds"] or 0.0),
            "wall_s": wall, "accuracy": result.summary["glai_accuracy"]}


def direct(name: str, config: dict[str, Any], checkpoints: bool = False) -> dict[str, float]:
    """The library alone, in a fresh process like the worker's: same data and config, no-op hooks
    (optionally checkpointing every epoch, as the worker's hooks do)."""
    payload = json.dumps({"name": name, "config": config, "checkpoints": checkpoints})
    out = subprocess.run([sys.executable, "-m", "bench.service_overhead", "--direct-child", payload],
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


def through_service(stack: Stack, dataset_id: str, config: dict[str, Any]) -> dict[str, float]:
    with stack.client() as client:
        job = client.post("/v1/jobs", json={"dataset_id": dataset_id, **config}).raise_for_status().json()
        job = wait_job(client, job["id"], 600, poll=2.0)  # slow polling: 2 shared cores
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['state']}: {job.get('failure_message')}")
    _, rows = transitions(stack.database_url, job["id"])
    states = {value: at for field_name, value, at in rows if field_name == "state"}
    summary = job["summary"]
    return {"library_s": summary["glai_seconds"] + (summary["baseline_seconds"] or 0.0),
            "wall_s": (states["succeeded"] - states["running"]).total_seconds(),
            "accuracy": summary["glai_accuracy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--dataset", default="fashion-mnist", help="Built-in data set of the mid-sized job.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved direct/service rounds.")
    parser.add_argument("--quick", action="store_true", help="Smaller job and 8 latency samples.")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--direct-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.direct_child:
        job = json.loads(args.direct_child)
        print(json.dumps(_direct_child(job["name"], job["config"], job["checkpoints"])))
        return 0
    config = QUICK_JOB if args.quick else MID_JOB
    n_latency = 8 if args.quick else args.latency_jobs

    stack = start_stack(keep_logs="glai-overhead")
    try:
        wait_worker_ready(stack)
        with stack.client() as client:
            tiny = client.post("/v1/datasets/builtin", json={"name": "iris"}).raise_for_status().json()
            mid = client.post("/v1/datasets/builtin", json={"name": args.dataset}).raise_for_status().json()
        through_service(stack, tiny["id"], TINY_JOB)  # first job: imports and CUDA/torch warm-up
        lat = latency(stack, tiny["id"], n_latency)
        runs = []
        for _ in range(args.rounds):  # interleaved, so drift on the shared cores hits every kind
            runs.append(("direct", direct(args.dataset, config)))
            runs.append(("direct+checkpoints", direct(args.dataset, config, checkpoints=True)))
            runs.append(("service", through_service(stack, mid["id"], config)))
    finally:
        stack.close()

    print(f"\n(a) submit -> running, {len(lat)} jobs one at a time, idle worker, Redis broker, PostgreSQL")
    print("| jobs | median s | p90 s | min s | max s |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {len(lat)} | {statistics.median(lat):.3f} | {_pct(lat, 0.9):.3f} | {min(lat):.3f} "
          f"| {max(lat):.3f} |")

    hidden = config["architecture"]["hidden"]
    print(f"\n(b) worker overhead, {args.dataset}, reference MLP {hidden}, every phase, {args.rounds} rounds")
    print("| run | library training s (glai + baseline clocks): min / median | whole run s: min / median "
          "| library / direct (min) | whole / direct (min) | val accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    kinds = ["direct", "direct+checkpoints", "service"]
    best = {k: (min(r["library_s"] for n, r in runs if n == k), min(r["wall_s"] for n, r in runs if n == k))
            for k in kinds}
    for kind in kinds:
        lib = [r["library_s"] for n, r in runs if n == kind]
        wall = [r["wall_s"] for n, r in runs if n == kind]
        acc = [r["accuracy"] for n, r in runs if n == kind][0]
        print(f"| {kind} | {min(lib):.2f} / {statistics.median(lib):.2f} | {min(wall):.2f} / "
              f"{statistics.median(wall):.2f} | {best[kind][0] / best['direct'][0]:.3f} | "
              f"{best[kind][1] / best['direct'][1]:.3f} | {acc:.4f} |")
    print("whole run: direct = run_pipeline wall; service = running -> succeeded (loading data from storage, "
          "checkpoints, curve writes, export of every artifact included)")
    if args.json:
        args.json.write_text(json.dumps({"latency_s": lat, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
