"""Scale benchmark (not a test): a generated N x 768 float32 data set through the real service.

Generates a learnable data set (seeded Gaussian class mixture, written as a stored npz member by
member, never held in memory), starts the whole service (PostgreSQL, Redis, uvicorn, a Celery worker:
``bench.service_stack``), uploads the file through ``POST /v1/datasets`` (streamed), trains one small
job on it and prints one table: data set bytes, peak RSS (VmHWM) of the API and of the worker against
the data set size, GPU memory of the worker (nvidia-smi, when there is a GPU), and wall time per stage.

    .venv/bin/python -m bench.scale                      # 1,000,000 x 768 (3.07 GB), about 6 min on 2 cores
    .venv/bin/python -m bench.scale --rows 200000        # a quicker run
    .venv/bin/python -m bench.scale --device-budget 1e9  # GPU: force streaming from pinned host memory

The generated file and the service's storage live under a temp directory and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.service_stack import gpu_memory_of, start_stack, transitions, wait_job, wait_worker_ready
from glai_core.streaming import current_rss_bytes, peak_rss_bytes

D = 768
CLASSES = 10
JOB: dict[str, Any] = {  # a few epochs' worth, sized for 2 CPU cores and 10 minutes
    "architecture": {"hidden": [128]},
    "structural": {"max_epochs": 1, "min_epochs": 1, "batch_size": 2048, "probe_size": 2000},
    "quantitative": {"solver": "adam", "epochs": 1, "batch_size": 2048, "lr": 3e-4},
    "pruning": {"enabled": False},
    "baseline": {"enabled": False},
    "validation_fraction": 0.1,
    "seed": 0,
}


def write_dataset(path: Path, rows: int, d: int = D, classes: int = CLASSES, seed: int = 0,
                  block_rows: int = 16384) -> int:
    """A Gaussian class mixture written block by block as an uncompressed npz; returns X's bytes.

    Class means are random with norm ~2.2 (overlapping classes: learnable, not trivially separable)."""
    rng = np.random.default_rng(seed)
    means = (rng.standard_normal((classes, d)) * (2.2 / np.sqrt(d))).astype(np.float32)
    labels = rng.integers(0, classes, size=rows).astype(np.int64)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (rows, d)})
            for start in range(0, rows, block_rows):
                y = labels[start:start + block_rows]
                block = rng.standard_normal((y.shape[0], d), dtype=np.float32)
                block += means[y]
                member.write(block.tobytes())
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, labels)
    return rows * d * 4


class Sampler:
    """Samples the worker's GPU memory (nvidia-smi) while the job runs; RSS peaks come from VmHWM."""

    def __init__(self, pid: int) -> None:
        self.pid, self.gpu_peak = pid, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            used = gpu_memory_of(self.pid)
            if used is None:
                return
            self.gpu_peak = max(self.gpu_peak or 0, used)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _gb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e9:.2f} GB"


def _stages(created: datetime, rows: list[tuple[str, str, datetime]], log: str) -> dict[str, float]:
    """Seconds per stage: queue and running time from the state transitions (written synchronously),
    each phase from its own clock (the ``[phase] done ... seconds=`` log line), the rest of the running
    time (data loading, split, standardisation, placement, export) by difference."""
    states = {value: at for field_name, value, at in rows if field_name == "state"}
    stages: dict[str, float] = {}
    if "running" in states:
        stages["queue (created -> running)"] = (states["running"] - created).total_seconds()
    phases = {}
    for match in re.finditer(r"^\[(\w+)\] done .*?seconds=([0-9.eE+-]+)", log, re.MULTILINE):
        phases[match.group(1)] = float(match.group(2))
    for name, seconds in phases.items():
        stages[f"phase {name} (library clock)"] = seconds
    final = next((states[s] for s in ("succeeded", "failed", "cancelled") if s in states), None)
    if final is not None and "running" in states:
        running = (final - states["running"]).total_seconds()
        stages["load + split + standardise + place + export"] = running - sum(phases.values())
        stages["running -> final state"] = running
    return stages


def run(rows: int, workdir: Path, budget: float | None, timeout: float) -> dict[str, Any]:
    path = workdir / "scale.npz"
    started = time.monotonic()
    data_bytes = write_dataset(path, rows)
    generate_s = time.monotonic() - started
    file_bytes = path.stat().st_size
    env = {"GLAI_MAX_UPLOAD_BYTES": str(file_bytes + 64 * 1024**2)}
    if budget is not None:
        env["GLAI_DEVICE_MEMORY_BUDGET_BYTES"] = str(int(budget))
    stack = start_stack(env, keep_logs="glai-scale")
    try:
        wait_worker_ready(stack)
        api_idle, worker_idle = current_rss_bytes(stack.api.pid), current_rss_bytes(stack.worker.pid)
        with stack.client(timeout=3600) as client:
            started = time.monotonic()
            with open(path, "rb") as handle:
                response = client.post("/v1/datasets", data={"name": "scale", "kind": "features"},
                                       files={"file": ("scale.npz", handle, "application/octet-stream")})
            upload_s = time.monotonic() - started
            response.raise_for_status()
            dataset = response.json()
            api_peak = peak_rss_bytes(stack.api.pid)
            path.unlink()  # the service holds its own copy now: free the disk early
            with Sampler(stack.worker.pid) as sampler:
                started = time.monotonic()
                job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], **JOB})
                job = wait_job(client, job.raise_for_status().json()["id"], timeout)
                job_s = time.monotonic() - started
            worker_peak = peak_rss_bytes(stack.worker.pid)
            log = client.get(f"/v1/jobs/{job['id']}/logs", params={"offset": 0}).json().get("text", "")
        created, rows_t = transitions(stack.database_url, job["id"])
        stages = _stages(created, rows_t, log)
    finally:
        stack.close()
    return {"rows": rows, "features": D, "data_bytes": data_bytes, "file_bytes": file_bytes,
            "generate_s": generate_s, "upload_s": upload_s, "job_s": job_s, "stages": stages,
            "api_idle": api_idle, "api_peak": api_peak, "worker_idle": worker_idle,
            "worker_peak": worker_peak,
            "gpu_peak": sampler.gpu_peak, "state": job["state"], "summary": job.get("summary") or {},
            "failure": job.get("failure_message"), "budget": budget}


def report(r: dict[str, Any]) -> None:
    size = r["data_bytes"]
    print(f"\nscale: {r['rows']:,} x {r['features']} float32, job {r['state']}"
          + (f" ({r['failure']})" if r["failure"] else "")
          + f", validation accuracy {r['summary'].get('glai_accuracy')}")
    print("| measure | value | / data set |")
    print("|---|---:|---:|")
    print(f"| data set (X float32) | {_gb(size)} | 1.00x |")
    print(f"| upload file (npz) | {_gb(r['file_bytes'])} | {r['file_bytes'] / size:.2f}x |")
    for name in ("API", "worker"):
        idle, peak = r[f"{name.lower()}_idle"], r[f"{name.lower()}_peak"]
        print(f"| {name} peak RSS (VmHWM) | {_gb(peak)} | {peak / size:.2f}x |")
        print(f"| {name} growth over idle ({_gb(idle)}) | {_gb(peak - idle)} | {(peak - idle) / size:.2f}x |")
    gpu = r["gpu_peak"]
    ratio = "n/a" if gpu is None else f"{gpu / size:.2f}x"
    print(f"| worker GPU memory (nvidia-smi peak) | {_gb(gpu)} | {ratio} |")
    print(f"| device budget | {_gb(r['budget'])} | |")
    print("| **wall time** | **s** | |")
    print(f"| generate + write npz | {r['generate_s']:.1f} | |")
    print(f"| upload + validate + canonicalise (one request) | {r['upload_s']:.1f} | |")
    for name, seconds in r["stages"].items():
        print(f"| job: {name} | {seconds:.1f} | |")
    print(f"| job: submit -> final state seen by the client | {r['job_s']:.1f} | |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--device-budget", type=float, default=None,
                        help="GLAI_DEVICE_MEMORY_BUDGET_BYTES for the worker (default: its own default).")
    parser.add_argument("--timeout", type=float, default=480.0, help="Seconds to wait for the job.")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)
    free = shutil.disk_usage(args.workdir).free
    need = 3.3 * args.rows * D * 4  # upload file, the API's temp copy of it, the canonical X.npy
    if free < need:
        parser.error(f"{args.workdir} has {free / 1e9:.1f} GB free; this run needs about {need / 1e9:.1f} GB")
    workdir = Path(tempfile.mkdtemp(prefix="glai-scale-", dir=args.workdir))
    try:
        result = run(args.rows, workdir, args.device_budget, args.timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["state"] == "succeeded" else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
