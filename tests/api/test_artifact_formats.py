"""A job's files besides its models, the ONNX copies and config.json: listed with their format, downloaded
under their own extension (by the API and the client alike)."""

from __future__ import annotations

import hashlib

import pytest

from glai_client.client import artifact_filename
from glai_common.models import Artifact
from tests.api.helpers import Api, dataset_id, insert_job

FILES = {"trained.onnx": (b"onnx bytes", "onnx"), "config.json": (b'{"format": "glai-job-config"}', "json")}


def test_onnx_copies_and_config_are_listed_and_downloaded_as_what_they_are(api: Api) -> None:
    job_id = insert_job(api, dataset_id(api), "succeeded", artifact=b"model bytes")
    with api.session() as session:
        for name, (content, _) in FILES.items():
            key = f"jobs/{job_id}/{name}"
            source = api.tmp_dir / name
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(content)
            api.services.storage.put_file(key, source)
            session.add(Artifact(job_id=job_id, name=name, storage_key=key, size_bytes=len(content),
                                 sha256=hashlib.sha256(content).hexdigest(), meta={}))
        session.commit()
    listed = {a["name"]: a for a in api.client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    assert {name: a["format"] for name, a in listed.items()} == {
        "trained": "safetensors", "trained.onnx": "onnx", "config.json": "json"}
    for name, (content, _) in {**FILES, "trained": (b"model bytes", "safetensors")}.items():
        response = api.client.get(listed[name]["url"])
        assert response.status_code == 200 and response.content == content
        expected = artifact_filename(job_id, name)
        assert response.headers["content-disposition"] == f'attachment; filename="{expected}"'
    assert artifact_filename(job_id, "trained.onnx") == f"{job_id}-trained.onnx"
    assert artifact_filename(job_id, "pruned-50") == f"{job_id}-pruned-50.safetensors"


@pytest.mark.parametrize("name", ["..", ".onnx", "../x", "a/b", "", "x y", "config.json/.."])
def test_a_name_that_could_leave_the_directory_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid"):
        artifact_filename("ab12", name)
