"""Uploads: good files are stored once; bad ones get a clear 4xx and leave no row and no file."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import func, select

from glai_common.models import Dataset
from tests.api.helpers import Api, csv_bytes, dataset_id, insert_job, npz_bytes, upload


def assert_nothing_stored(api: Api) -> None:
    with api.session() as session:
        count = session.scalar(select(func.count()).select_from(Dataset).where(Dataset.owner == api.owner))
    assert count == 0
    datasets_dir = api.storage_root / "datasets"
    assert not datasets_dir.exists() or not any(datasets_dir.iterdir())
    assert not api.tmp_dir.exists() or not any(api.tmp_dir.iterdir())


def test_upload_npz_stores_canonical_arrays(api: Api) -> None:
    content = npz_bytes(n=40, d=6, classes=4)
    response = upload(api, content, "train.npz", name="my data")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["name"], body["n_samples"], body["n_features"], body["n_classes"]) == ("my data", 40, 6, 4)
    import hashlib

    assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["size_bytes"] == len(content)
    stored = api.storage_root / "datasets" / body["id"]
    assert {p.name for p in stored.iterdir()} >= {"X.npy", "y.npy", "meta.json"}
    assert np.load(stored / "X.npy").shape == (40, 6)
    assert body.pop("duplicate_of") == []  # (only the upload's answer says it)
    assert api.client.get(f"/v1/datasets/{body['id']}").json() == body
    assert not any(api.tmp_dir.iterdir())  # the streamed temp file is gone


def test_upload_csv_with_label_column(api: Api) -> None:
    response = upload(api, csv_bytes(label="kind"), "t.csv", label_column="kind")
    assert response.status_code == 201, response.text
    assert response.json()["class_names"] == ["cat", "dog"] and response.json()["n_features"] == 2


def test_upload_parquet(api: Api) -> None:
    import pandas as pd

    buffer = io.BytesIO()
    table = pd.DataFrame({"f1": [0.1, 0.2, 0.3, 0.4], "f2": [1.0, 2.0, 3.0, 4.0], "label": [0, 1, 0, 1]})
    table.to_parquet(buffer)
    response = upload(api, buffer.getvalue(), "t.parquet")
    assert response.status_code == 201, response.text
    assert response.json()["file_format"] == "parquet"


@pytest.mark.parametrize(("content", "filename", "fields", "status", "field", "words"), [
    (b"hello", "data.txt", {}, 422, "file", ".npz"),
    (b"not a zip", "data.npz", {}, 422, None, ""),
    (npz_bytes(X=np.full((10, 3), np.nan, dtype=np.float32), y=np.arange(10) % 2), "nan.npz", {}, 422, None,
     "nan"),
    (npz_bytes(y=np.zeros(60, dtype=np.int64)), "one.npz", {}, 422, None, "class"),
    (npz_bytes(y=np.arange(59) % 3), "len.npz", {}, 422, None, ""),
    (csv_bytes(), "t.csv", {"label_column": "missing"}, 422, "label_column", "missing"),
    (b"", "empty.npz", {}, 422, None, "empty"),
])
def test_bad_uploads_are_rejected_and_leave_nothing(api: Api, content: bytes, filename: str,
                                                    fields: dict[str, str], status: int, field: str | None,
                                                    words: str) -> None:
    response = upload(api, content, filename, **fields)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"detail", "field"} and body["detail"]
    if field:
        assert body["field"] == field
    assert words.lower() in body["detail"].lower()
    assert_nothing_stored(api)


def test_oversize_upload_is_413_naming_the_limit(make_api: Callable[..., Api]) -> None:
    api = make_api(max_upload_bytes=2000)
    response = upload(api, npz_bytes(n=200, d=20))
    assert response.status_code == 413
    assert "2000 bytes" in response.json()["detail"] and "GLAI_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert_nothing_stored(api)


def test_upload_needs_multipart_with_a_file(api: Api) -> None:
    assert api.client.post("/v1/datasets", json={"x": 1}).status_code == 415
    response = api.client.post("/v1/datasets", data={"name": "x"}, files={"other": ("a", b"1")})
    assert response.status_code == 422 and response.json()["field"] == "file"
    assert_nothing_stored(api)


def test_unknown_kind_is_422(api: Api) -> None:
    response = upload(api, npz_bytes(), "a.npz", kind="audio")
    assert response.status_code == 422 and response.json()["field"] == "kind"


def test_failure_while_storing_removes_the_files(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_commit() -> None:
        raise RuntimeError("database went away")

    original = api.services.sessions

    def sessions():  # type: ignore[no-untyped-def]
        session = original()
        session.commit = broken_commit  # type: ignore[method-assign]
        return session

    monkeypatch.setattr(api.services, "sessions", sessions)
    assert upload(api).status_code == 500
    monkeypatch.setattr(api.services, "sessions", original)
    assert_nothing_stored(api)


def test_builtin_digits_and_unknown_name(api: Api) -> None:
    response = api.client.post("/v1/datasets/builtin", json={"name": "digits"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["source"], body["n_features"], body["n_classes"]) == ("builtin", 64, 10)
    bad = api.client.post("/v1/datasets/builtin", json={"name": "imagenet"})
    assert bad.status_code == 422 and bad.json()["field"] == "name" and "digits" in bad.json()["detail"]


def test_list_paginates_newest_first(api: Api) -> None:
    ids = [dataset_id(api) for _ in range(3)]
    first = api.client.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in first["items"]] == ids[::-1][:2] and first["next_cursor"]
    second = api.client.get("/v1/datasets", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [d["id"] for d in second["items"]] == [ids[0]] and second["next_cursor"] is None


def test_delete_removes_row_and_files_and_is_refused_while_used(api: Api) -> None:
    ds = dataset_id(api)
    job = insert_job(api, ds, "running")
    response = api.client.delete(f"/v1/datasets/{ds}")
    assert response.status_code == 409 and "1 of them still active" in response.json()["detail"]
    with api.session() as session:
        from glai_common.models import Job

        session.get(Job, job).state = "succeeded"  # type: ignore[union-attr]
        session.commit()
    api.client.post(f"/v1/jobs/{job}/cancel")
    assert api.client.delete(f"/v1/jobs/{job}").status_code == 204
    assert api.client.delete(f"/v1/datasets/{ds}").status_code == 204
    assert api.client.get(f"/v1/datasets/{ds}").status_code == 404
    assert not (api.storage_root / "datasets" / ds).exists()


def test_an_upload_names_the_owners_datasets_with_the_same_sha256(api: Api) -> None:
    content = npz_bytes(n=30, seed=7)
    first = upload(api, content, "a.npz").json()
    assert first["duplicate_of"] == []
    second = upload(api, content, "renamed.npz", name="again").json()
    assert second["duplicate_of"] == [first["id"]] and second["sha256"] == first["sha256"]
    third = upload(api, content, "b.npz").json()
    assert third["duplicate_of"] == [second["id"], first["id"]]  # newest first
    assert upload(api, npz_bytes(n=30, seed=8), "c.npz").json()["duplicate_of"] == []
    assert "duplicate_of" not in api.client.get(f"/v1/datasets/{third['id']}").json()
    other = {"Authorization": f"Bearer {api.new_key()}"}
    theirs = api.client.post("/v1/datasets", files={"file": ("a.npz", content)}, headers=other)
    assert theirs.status_code == 201 and theirs.json()["duplicate_of"] == []  # never another owner's ids
    assert api.client.delete(f"/v1/datasets/{second['id']}").status_code == 204
    assert upload(api, content, "d.npz").json()["duplicate_of"] == [third["id"], first["id"]]
    digits = api.client.post("/v1/datasets/builtin", json={"name": "iris"}).json()
    again = api.client.post("/v1/datasets/builtin", json={"name": "iris"}).json()
    assert digits["duplicate_of"] == [] and again["duplicate_of"] == [digits["id"]]
