"""The README's one command, end to end, on whatever machine runs this: a check, not a benchmark.

Starts ``glai serve`` (SQLite, the embedded queue, one real Celery worker) in a fresh data directory,
trains the bundled digits data set once per precision through the HTTP API, downloads each trained model
and predicts with it, then stops the service. It is how the worker's CUDA path is checked on a lent GPU
machine, which has no PostgreSQL or Redis (``bench/device_check.sh``, step ``service``); on a CPU it is a
smoke test of the same path.

    python -m bench.serve_check [--precisions auto bf16] [--timeout 300]

Prints one table (state, device, precision, accuracies, wall time, prediction agreement) and exits 1 when
a job did not succeed or its downloaded model classifies fewer than 90% of the digits right.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import report
from bench.service_stack import free_port, wait_port
from glai_client.client import GlaiClient
from glai_core.data import LoadedData, builtin
from glai_core.predict import Predictor

REPO = Path(__file__).resolve().parents[1]


def start_service(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``glai serve`` as its own process group, so one signal stops the API and the worker."""
    env = {**os.environ, "GLAI_DATA_DIR": str(data_dir), "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    with log.open("wb") as out:
        command = [sys.executable, "-m", "glai_client.cli", "serve", "--port", str(port)]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_key(data_dir: Path, timeout: float) -> str:
    path = data_dir / "local_api_key"
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no API key at {path} after {timeout} s")
        time.sleep(0.2)
    return path.read_text().strip()


def run_job(client: GlaiClient, dataset_id: str, precision: str, timeout: float, models: Path,
            data: LoadedData) -> list[Any]:
    started = time.monotonic()
    job = client.submit_job(dataset_id, {"precision": precision, "baseline": {"enabled": True}, "seed": 0})
    job = client.wait(job["id"], timeout=timeout, poll_s=0.5)
    wall = time.monotonic() - started
    if job["state"] != "succeeded":
        print(f"   job {job['id']} ({precision}) {job['state']}: {job.get('failure_kind')}: "
              f"{job.get('failure_message')}", flush=True)
    summary = job.get("summary") or {}
    found = re.search(r"\bdevice (cuda\S*|cpu)\b", client.logs(job["id"])["text"])  # the worker's log line
    agreement = float("nan")
    if job["state"] == "succeeded":
        path = client.model_file(job["id"], "trained", models / precision)
        predicted = Predictor.load(path).predict(data.x)
        names = np.asarray(data.class_names)[data.y] if data.class_names else data.y
        agreement = float(np.mean(np.asarray(predicted) == names))  # train and validation rows together
    return [precision, job["state"], found.group(1) if found else "?", summary.get("training_precision", "-"),
            summary.get("glai_accuracy", float("nan")), summary.get("baseline_accuracy", float("nan")),
            agreement, round(wall, 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["auto", "bf16"], choices=["auto", "fp32", "bf16"])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per job")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="glai-serve-check-") as tmp:
        data_dir, port = Path(tmp) / "var", free_port()
        log = Path(os.environ.get("OUT", tmp)) / "serve.log"
        service = start_service(data_dir, port, log)
        rows: list[list[Any]] = []
        try:
            wait_port(port, 120.0)
            key = wait_for_key(data_dir, 30.0)
            with GlaiClient(f"http://127.0.0.1:{port}", key) as client:
                dataset, data = client.builtin_dataset("digits"), builtin("digits")
                for precision in args.precisions:
                    rows.append(run_job(client, dataset["id"], precision, args.timeout, Path(tmp) / "models",
                                        data))
                    print("  ", rows[-1], flush=True)
        except Exception:
            print(log.read_text()[-4000:])  # the service's own account of why it did not answer
            raise
        finally:
            os.killpg(service.pid, signal.SIGTERM)
            try:
                service.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(service.pid, signal.SIGKILL)
    report("glai serve end to end (digits, one job per precision)",
           ["precision", "state", "worker device", "ran in", "GLAI val acc", "MLP val acc",
            "downloaded model: agreement with labels (all rows)", "submit to done s"], rows,
           as_markdown=args.markdown)
    ok = bool(rows) and all(row[1] == "succeeded" and row[6] > 0.9 for row in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
