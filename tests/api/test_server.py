"""The API over a real socket (uvicorn in a thread), driven by the Python client: streamed uploads,
an early 413, resumable downloads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from glai_client.client import GlaiClient, GlaiError
from tests.api.helpers import Api, insert_job, npz_bytes


def test_client_upload_submit_download_over_http(server: tuple[Api, str], tmp_path: Path) -> None:
    api, url = server
    data = tmp_path / "train.npz"
    data.write_bytes(npz_bytes(n=500, d=20))
    with GlaiClient(url, api.key) as client:
        ds = client.upload_dataset(data, name="streamed")
        assert ds["n_samples"] == 500 and ds["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
        job = client.submit_job(ds["id"], {"architecture": {"hidden": [8]}}, idempotency_key="one")
        again = client.submit_job(ds["id"], {"architecture": {"hidden": [8]}}, idempotency_key="one")
        assert again["id"] == job["id"]
        with pytest.raises(GlaiError) as info:
            client.submit_job(ds["id"], {"architecture": {"hidden": [9]}}, idempotency_key="one")
        assert info.value.status == 409 and info.value.field == "Idempotency-Key"
        assert client.cancel(job["id"])["state"] == "cancelled"

        content = bytes(range(256)) * 4000
        done = insert_job(api, ds["id"], "succeeded", artifact=content)
        target = tmp_path / "model.safetensors"
        target.with_name(target.name + ".part").write_bytes(content[:1000])  # an interrupted download
        assert client.download_artifact(done, "trained", target) == target
        assert target.read_bytes() == content


def test_oversize_upload_over_http_is_413(server: tuple[Api, str], tmp_path: Path) -> None:
    api, url = server
    big = tmp_path / "big.npz"
    big.write_bytes(npz_bytes(n=5000, d=20))  # ~800 kB > 200 kB
    with GlaiClient(url, api.key) as client, pytest.raises(GlaiError) as info:
        client.upload_dataset(big)
    assert info.value.status == 413 and "200000 bytes" in info.value.detail
    assert not list((api.storage_root / "datasets").glob("*"))
    assert not any(api.tmp_dir.iterdir())


def test_unreachable_api_is_a_clear_error() -> None:
    with GlaiClient("http://127.0.0.1:9", "k") as client, pytest.raises(GlaiError) as info:
        client.get_job("x")
    assert info.value.status == 0 and "cannot reach" in str(info.value)
