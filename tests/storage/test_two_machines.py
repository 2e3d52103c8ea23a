"""An API and workers that share nothing but PostgreSQL, Redis and an S3 endpoint (moto's real HTTP
server): separate data directories, as on separate machines. A job uploaded through one succeeds on the
other with its artifacts downloadable (Range, ETag, HEAD); a worker killed mid-training is resumed on a
third "machine" from the checkpoints it mirrored to the bucket."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from api.services import api_keys
from glai_client.client import GlaiClient
from glai_common import jobs
from glai_common.db import make_engine
from glai_common.migrate import upgrade
from glai_common.s3_storage import S3Storage
from tests.e2e import flow
from tests.e2e.stack import Process, free_port, service_env, start_api, start_worker, wait_ready
from tests.s3_server import S3Endpoint

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(600)]

# Short leases so the killed worker's job is requeued within seconds; a checkpoint every epoch.
FAST_FAULTS = {"worker_lease_s": "3", "heartbeat_interval_s": "0.5", "checkpoint_interval_s": "0",
               "reaper_interval_s": "1"}
# Long enough to be killed mid-phase, short enough to finish on two shared cores once resumed.
RESUMABLE = {"architecture": {"hidden": [16]},
             # long enough that the kill lands inside the phase even when log lines arrive late
             "structural": {"max_epochs": 300, "min_epochs": 300, "batch_size": 64},
             "pruning": {"enabled": False}, "baseline": {"enabled": False}}


class Machines:
    """One PostgreSQL database, one Redis database, one bucket; each process its own data directory."""

    def __init__(self, root: Path, database_url: str, broker_url: str, s3: S3Endpoint) -> None:
        upgrade(database_url)
        self.root, self.database_url = root, database_url
        self.engine = make_engine(database_url)
        with Session(self.engine) as session:
            self.key = api_keys.create_key(session, "two-machines").key
        self.store = s3.store()
        self.settings = {"database_url": database_url, "broker_url": broker_url,
                         **s3.settings(self.store.bucket), **FAST_FAULTS}
        self.processes: list[Process] = []

    def data_dir(self, name: str) -> Path:
        return self.root / name

    def worker(self, name: str) -> Process:
        env = service_env(self.data_dir(name), **self.settings)
        env["OMP_NUM_THREADS"] = "1"
        self.processes.append(start_worker(env, self.root, name=name))
        return self.processes[-1]

    def api(self) -> str:
        port = free_port()
        self.processes.append(start_api(service_env(self.data_dir("api"), **self.settings), port, self.root))
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, self.processes, timeout=180)  # two shared cores: start-up can be slow
        return url

    def log(self, job_id: str) -> list[str]:
        with Session(self.engine) as session:
            return [line.text for line in jobs.read_log(session, job_id, limit=100_000)]

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.engine.dispose()


@pytest.fixture
def machines(tmp_path: Path, postgres_url: str, redis_url: str, s3: S3Endpoint) -> Iterator[Machines]:
    made = Machines(tmp_path, postgres_url, redis_url, s3)
    try:
        yield made
    except BaseException:
        print(made.tails())
        raise
    finally:
        made.close()


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()) \
        if directory.exists() else []


@contextmanager
def _client(url: str, key: str) -> Iterator[GlaiClient]:
    with GlaiClient(url, key) as client:
        yield client


def test_a_job_uploaded_on_one_machine_trains_on_another(machines: Machines, tmp_path: Path) -> None:
    worker = machines.worker("worker-machine")
    url = machines.api()
    path, _x, _y = flow.digits_file(tmp_path)
    with _client(url, machines.key) as client:
        dataset = client.upload_dataset(path, name="digits")
        job = client.submit_job(dataset["id"], flow.TINY, idempotency_key="two-machines")
        done = client.wait(job["id"], timeout=300, poll_s=0.5)
        assert done["state"] == "succeeded", (done.get("failure_kind"), done.get("failure_message"),
                                              machines.log(job["id"]), worker.tail())
        artifacts = {a["name"]: a for a in done["artifacts"]}
        assert {"trained", "baseline", "pruned-50"} <= set(artifacts)
        (tmp_path / "downloads").mkdir()
        for name, artifact in artifacts.items():
            got = client.download_artifact(job["id"], name, tmp_path / "downloads" / f"{name}.bin")
            assert hashlib.sha256(got.read_bytes()).hexdigest() == artifact["sha256"], name
            assert got.stat().st_size == artifact["size_bytes"]

    # Downloads from the bucket keep Range, ETag and HEAD.
    trained = (tmp_path / "downloads" / "trained.bin").read_bytes()
    auth = {"Authorization": f"Bearer {machines.key}"}
    artifact_url = f"{url}/v1/jobs/{job['id']}/artifacts/trained"
    etag = f'"{artifacts["trained"]["sha256"]}"'
    part = httpx.get(artifact_url, headers={**auth, "Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == trained[100:1100]
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(trained)}"
    assert httpx.get(artifact_url, headers={**auth, "Range": "bytes=-50"}).content == trained[-50:]
    assert httpx.get(artifact_url, headers={**auth, "If-None-Match": etag}).status_code == 304
    head = httpx.head(artifact_url, headers=auth)
    assert head.status_code == 200 and head.headers["ETag"] == etag
    assert int(head.headers["Content-Length"]) == len(trained) and head.content == b""

    # Everything lives in the bucket; neither machine holds the other's files.
    stored = {info.key for info in machines.store.list_prefix("datasets")} | {
        info.key for info in machines.store.list_prefix("jobs")}
    assert {f"datasets/{dataset['id']}/X.npy", f"datasets/{dataset['id']}/y.npy"} <= stored
    assert {f"jobs/{job['id']}/{name}.safetensors" for name in ("trained", "baseline", "pruned-50")} <= stored
    assert not any("/checkpoints/" in key for key in stored)  # removed once the job succeeded
    api_files, worker_files = _files(machines.data_dir("api")), _files(machines.data_dir("worker-machine"))
    assert not any(f.startswith(("storage/", "staging/")) for f in api_files), api_files
    assert not any(f.startswith("storage/") for f in worker_files), worker_files
    staged = [f for f in worker_files if f.startswith("staging/cache/entries/")]
    assert any(f.endswith("/X.npy") for f in staged), worker_files  # the dataset, staged and verified
    assert not any(f.startswith("staging/work/") for f in worker_files)  # the attempt's scratch is gone

    with _client(url, machines.key) as client:
        client.delete_job(job["id"])
    assert machines.store.list_prefix(f"jobs/{job['id']}") == []


def _checkpoint_stored(store: S3Storage, job_id: str) -> bool:
    return store.stat(f"jobs/{job_id}/checkpoints/structural.safetensors") is not None


def _structural_steps(lines: list[str]) -> list[int]:
    return [int(line.split()[2].split("/")[0]) for line in lines if line.startswith("[structural] step ")]


def _stored_structural_step(store: S3Storage, job_id: str, scratch: Path) -> int:
    """The epoch of the structural checkpoint in the bucket (its metadata, as the runner reads it)."""
    from worker.pipeline_runner import checkpoint_states

    name = "structural.safetensors"
    store.download_file(f"jobs/{job_id}/checkpoints/{name}", scratch / name)
    return int(checkpoint_states(scratch)["structural"]["step"])


def test_a_killed_workers_job_resumes_on_another_machine(machines: Machines, tmp_path: Path) -> None:
    first = machines.worker("machine-b")
    url = machines.api()
    with _client(url, machines.key) as client:
        dataset = client.builtin_dataset("digits")
        job = client.submit_job(dataset["id"], RESUMABLE)
        deadline = time.monotonic() + 180
        while not (_checkpoint_stored(machines.store, job["id"])
                   and len(_structural_steps(machines.log(job["id"]))) >= 5):
            assert time.monotonic() < deadline, f"no checkpoint in the bucket\n{first.tail()}"
            assert first.proc.poll() is None, first.tail()
            time.sleep(0.2)
        first.proc.kill()  # SIGKILL: the machine is gone, with its local files
        first.proc.wait()
        time.sleep(0.5)  # an upload the kill cut short is either complete or absent by now
        stored_step = _stored_structural_step(machines.store, job["id"], tmp_path / "peek")

        second = machines.worker("machine-c")
        done = client.wait(job["id"], timeout=300, poll_s=0.5)
        log = machines.log(job["id"])
        assert done["state"] == "succeeded", (done.get("failure_kind"), done.get("failure_message"), log,
                                              second.tail())
    assert any(line.startswith("attempt 2 on ") for line in log), log
    resumed = _structural_steps(log[next(i for i, line in enumerate(log) if line.startswith("attempt 2")):])
    # The second machine continued right after the checkpoint the first one had mirrored, not from epoch 1.
    assert stored_step >= 1 and resumed and resumed[0] == stored_step + 1, (stored_step, resumed[:3])
    assert resumed[-1] == RESUMABLE["structural"]["max_epochs"]  # type: ignore[index]
    assert not _files(machines.data_dir("machine-c") / "staging" / "work")
