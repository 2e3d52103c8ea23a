"""What an upload may unfold into: columns (GLAI_MAX_COLUMNS), decompressed bytes
(GLAI_MAX_DECOMPRESSED_BYTES) and the owner's storage (GLAI_MAX_OWNER_STORAGE_BYTES). A refused upload stores
nothing."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.api.helpers import Api, upload
from tests.api.test_datasets import assert_nothing_stored


def wide_csv(columns: int, rows: int) -> bytes:
    lines = [",".join([f"c{i}" for i in range(columns - 1)] + ["label"])]
    lines += [",".join(str((r + i) % 10) for i in range(columns - 1)) + f",{r % 2}" for r in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def test_the_issues_wide_csv_is_refused_at_once(api: Api) -> None:
    """100,000 columns, 4 rows (1.4 MB): accepted after 113 s of API CPU before."""
    started = time.perf_counter()
    response = upload(api, wide_csv(100_000, 4), "wide.csv")
    assert time.perf_counter() - started < 10
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "file" and "GLAI_MAX_COLUMNS" in body["detail"]
    assert "100,000 columns, above the limit of 16,384" in body["detail"]
    assert_nothing_stored(api)


def test_the_column_limit_is_a_setting(make_api: Callable[..., Api]) -> None:
    api = make_api(max_columns=6)
    for content, name in ((wide_csv(7, 10), "wide.csv"), (_parquet(7), "wide.parquet")):
        response = upload(api, content, name)
        assert response.status_code == 422 and "above the limit of 6" in response.json()["detail"], name
        assert "GLAI_MAX_COLUMNS" in response.json()["detail"]
    assert_nothing_stored(api)
    assert upload(api, wide_csv(6, 10), "ok.csv").status_code == 201
    assert upload(api, _parquet(6), "ok.parquet").status_code == 201


def _parquet(columns: int) -> bytes:
    table = pa.table({**{f"f{i}": np.arange(8.0) for i in range(columns - 1)}, "label": np.arange(8) % 2})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------ decompression and the owner's quota

def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _stored_files(api: Api) -> list[str]:
    root = api.storage_root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_decompression_is_bound_to_the_upload_limit(make_api: Callable[..., Api]) -> None:
    """Tied to GLAI_MAX_UPLOAD_BYTES (4x unless GLAI_MAX_DECOMPRESSED_BYTES says otherwise): a 1 MB npz
    used to unfold into 1.1 GB."""
    api = make_api(max_upload_bytes=100_000)
    zeros = _npz(X=np.zeros((2000, 100), dtype=np.float32), y=np.arange(2000) % 2)  # 800 kB inside
    assert len(zeros) < 10_000
    pixels = _npz(X=np.zeros((2000, 60), dtype=np.uint8), y=np.arange(2000) % 2)  # 120 kB, 480 kB as float32
    rle = io.BytesIO()
    pq.write_table(pa.table({**{f"f{i}": np.zeros(2000) for i in range(60)}, "label": np.arange(2000) % 2}),
                   rle)
    for content, name, words in ((zeros, "zeros.npz", "decompress to"), (pixels, "pixels.npz", "stored as"),
                                 (rle.getvalue(), "zeros.parquet", "stored as")):
        response = upload(api, content, name)
        assert response.status_code == 413, (name, response.text)
        body = response.json()
        assert body["field"] == "file" and "GLAI_MAX_DECOMPRESSED_BYTES" in body["detail"], body
        assert words in body["detail"] and "400.00 kB" in body["detail"], body
    assert_nothing_stored(api)
    roomy = make_api(max_upload_bytes=100_000, max_decompressed_bytes=1_000_000)
    assert upload(roomy, zeros, "zeros.npz").status_code == 201


def test_a_fortran_ordered_npz_is_stored_like_a_c_ordered_one(api: Api) -> None:
    x = np.random.default_rng(3).normal(size=(50, 2, 3)).astype(np.float64)
    y = np.arange(50) % 3
    c_order = upload(api, _npz(X=x, y=y), "c.npz").json()
    fortran = upload(api, _npz(X=np.asfortranarray(x), y=y), "f.npz").json()
    stored = [(api.storage_root / "datasets" / d["id"] / "X.npy").read_bytes() for d in (c_order, fortran)]
    assert stored[0] == stored[1]
    np.testing.assert_array_equal(np.load(api.storage_root / "datasets" / fortran["id"] / "X.npy"),
                                  x.reshape(50, 6).astype(np.float32))
    assert fortran["stored_bytes"] == c_order["stored_bytes"] > 50 * 6 * 4


def test_the_owners_storage_quota(make_api: Callable[..., Api]) -> None:
    content = _npz(X=np.random.default_rng(0).normal(size=(400, 20)).astype(np.float32), y=np.arange(400) % 2)
    probe = make_api()
    stored = upload(probe, content, "probe.npz").json()["stored_bytes"]
    assert stored > 400 * 20 * 4  # X.npy, y.npy, meta.json
    api = make_api(max_owner_storage_bytes=stored * 2 - 1)
    first = upload(api, content, "a.npz")
    assert first.status_code == 201 and first.json()["stored_bytes"] == stored
    before = _stored_files(api)
    second = upload(api, content, "b.npz")
    assert second.status_code == 413, second.text
    body = second.json()
    assert body["field"] == "file" and "GLAI_MAX_OWNER_STORAGE_BYTES" in body["detail"]
    assert body["used_bytes"] == stored and body["quota_bytes"] == stored * 2 - 1
    assert _stored_files(api) == before and list(api.tmp_dir.iterdir()) == []
    assert len(api.client.get("/v1/datasets").json()["items"]) == 1
    builtin = api.client.post("/v1/datasets/builtin", json={"name": "digits"})
    assert builtin.status_code == 413 and builtin.json()["field"] == "name"
    other = {"Authorization": f"Bearer {api.new_key()}"}  # another owner has a quota of their own
    theirs = api.client.post("/v1/datasets", files={"file": ("c.npz", content)}, headers=other)
    assert theirs.status_code == 201
    assert api.client.delete(f"/v1/datasets/{first.json()['id']}").status_code == 204
    assert upload(api, content, "b.npz").status_code == 201
    unlimited = make_api(max_owner_storage_bytes=0)
    assert all(upload(unlimited, content, f"{i}.npz").status_code == 201 for i in range(3))
