"""POST /v1/jobs/{id}/predict over the real app and database (SQLite and PostgreSQL), with models from
real training: the answers are the downloaded model's, models stay loaded between requests, owners see
only their own jobs, and every bad or oversize body is a 4xx naming the field, before any model runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from api.predict_guard import field_at_cut
from glai_common.models import Artifact
from glai_core.artifacts import save_model
from glai_core.backbones import describe
from glai_core.config import (
    ArchitectureConfig,
    BaselineConfig,
    PruningConfig,
    QuantitativeConfig,
    StructuralConfig,
    TrainConfig,
)
from glai_core.data import LoadedData, builtin, train_val_split
from glai_core.hooks import RecordingHooks
from glai_core.pipeline import run_pipeline
from glai_core.predict import Predictor
from tests.api.helpers import Api, dataset_id, insert_job


@pytest.fixture(scope="module")
def iris() -> LoadedData:
    return train_val_split(builtin("iris"), 0.3, 0)


@pytest.fixture(scope="module")
def model_files(iris: LoadedData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained GLAI block and its MLP baseline from one real (short) run, as the worker exports them."""
    config = TrainConfig(architecture=ArchitectureConfig(hidden=[16]),
                         structural=StructuralConfig(max_epochs=20, batch_size=16),
                         quantitative=QuantitativeConfig(epochs=5, batch_size=16),
                         pruning=PruningConfig(enabled=False),
                         baseline=BaselineConfig(max_epochs=20, batch_size=16),
                         seed=0, device="cpu", precision="fp32")
    result = run_pipeline(LoadedData(iris.x, iris.y, class_names=iris.class_names), config, RecordingHooks())
    directory = tmp_path_factory.mktemp("predict-models")
    files = {}
    assert result.baseline is not None
    for name, model in (("trained", result.glai), ("baseline", result.baseline)):
        files[name] = save_model(directory / f"{name}.safetensors", model,
                                 {"name": name, "class_names": list(iris.class_names)},
                                 standardizer=result.standardizer)
    image = directory / "image.safetensors"  # the same head, as if trained on image embeddings
    save_model(image, result.glai, {"class_names": list(iris.class_names),
                                    "backbone": describe("efficientnet-lite0")},
               standardizer=result.standardizer)
    files["image"] = image
    return files


def _store(api: Api, job_id: str, name: str, content: bytes, key: str | None = None) -> None:
    key = key or f"jobs/{job_id}/{name}.safetensors"
    source = api.tmp_dir / f"{job_id}-{name}"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(content)
    api.services.storage.put_file(key, source)
    source.unlink()
    with api.session() as session:
        session.add(Artifact(job_id=job_id, name=name, storage_key=key, size_bytes=len(content),
                             sha256=hashlib.sha256(content).hexdigest(), meta={}))
        session.commit()


@pytest.fixture
def job(api: Api, model_files: dict[str, Path]) -> str:
    """A succeeded job of the test's owner with both models, an ONNX copy and a config.json."""
    job_id = insert_job(api, dataset_id(api), "succeeded")
    for name in ("trained", "baseline"):
        _store(api, job_id, name, model_files[name].read_bytes())
    _store(api, job_id, "trained.onnx", b"onnx bytes", f"jobs/{job_id}/trained.onnx")
    _store(api, job_id, "config.json", b"{}", f"jobs/{job_id}/config.json")
    return job_id


def _predict(api: Api, job_id: str, **body: object) -> httpx.Response:
    return api.client.post(f"/v1/jobs/{job_id}/predict", json=body)


@pytest.mark.parametrize("name", ["trained", "baseline"])
def test_predictions_are_the_downloaded_models(api: Api, job: str, model_files: dict[str, Path],
                                               iris: LoadedData, name: str) -> None:
    rows = np.asarray(iris.x_val, dtype=np.float32)
    response = _predict(api, job, artifact=name, rows=rows.tolist())
    assert response.status_code == 200, response.text
    body = response.json()
    local = Predictor.load(model_files[name])
    assert body["artifact"] == name and body["class_names"] == local.class_names
    assert body["sha256"] == hashlib.sha256(model_files[name].read_bytes()).hexdigest()
    assert body["classes"] == local.predict(rows)
    probabilities = np.asarray(body["probabilities"])
    assert probabilities.shape == (rows.shape[0], 3)
    assert np.abs(probabilities - local.predict_proba(rows)).max() < 1e-6
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    truth = [iris.class_names[k] for k in iris.y_val]
    assert np.mean([p == t for p, t in zip(body["classes"], truth, strict=True)]) > 0.6


def test_integers_are_numbers_and_the_default_model_is_trained(api: Api, job: str) -> None:
    response = _predict(api, job, rows=[[5, 3, 1, 0]])
    assert response.status_code == 200 and response.json()["artifact"] == "trained"


def test_models_stay_loaded_between_requests(api: Api, job: str, model_files: dict[str, Path]) -> None:
    cache = api.services.model_cache
    before = cache.loads
    for _ in range(3):
        assert _predict(api, job, rows=[[5.1, 3.5, 1.4, 0.2]]).status_code == 200
    assert cache.loads == before + 1 and cache.hits >= 2
    assert _predict(api, job, artifact="baseline", rows=[[5.1, 3.5, 1.4, 0.2]]).status_code == 200
    assert cache.loads == before + 2
    # A rewritten file (a resumed export) has another sha256: the old entry never answers for it.
    with api.session() as session:
        row = session.query(Artifact).filter_by(job_id=job, name="trained").one()
        key = row.storage_key
        session.delete(row)
        session.commit()
    api.services.storage.delete_prefix(key)
    _store(api, job, "trained", model_files["baseline"].read_bytes())
    answer = _predict(api, job, rows=[[5.1, 3.5, 1.4, 0.2]]).json()
    assert cache.loads == before + 3
    assert answer["sha256"] == hashlib.sha256(model_files["baseline"].read_bytes()).hexdigest()


def test_the_cache_is_bounded(make_api, model_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    api = make_api(predict_cache_models=1)
    job_id = insert_job(api, dataset_id(api), "succeeded")
    for name in ("trained", "baseline"):
        _store(api, job_id, name, model_files[name].read_bytes())
    for name in ("trained", "baseline", "trained", "trained"):
        assert _predict(api, job_id, artifact=name, rows=[[5.1, 3.5, 1.4, 0.2]]).status_code == 200
    assert api.services.model_cache.loads == 3 and len(api.services.model_cache) == 1
    small = make_api(predict_cache_bytes=100)  # no model fits: each request loads its own
    other = insert_job(small, dataset_id(small), "succeeded")
    _store(small, other, "trained", model_files["trained"].read_bytes())
    for _ in range(2):
        assert _predict(small, other, rows=[[5.1, 3.5, 1.4, 0.2]]).status_code == 200
    assert small.services.model_cache.loads == 2 and len(small.services.model_cache) == 0


def test_another_owners_job_is_not_found(api: Api, job: str) -> None:
    stranger = {"Authorization": f"Bearer {api.new_key()}"}
    response = api.client.post(f"/v1/jobs/{job}/predict", json={"rows": [[1, 2, 3, 4]]}, headers=stranger)
    assert response.status_code == 404 and "not found" in response.json()["detail"]
    missing = _predict(api, "0" * 32, rows=[[1, 2, 3, 4]])
    assert missing.status_code == 404
    assert missing.json()["detail"] == response.json()["detail"].replace(job, "0" * 32)
    anonymous = api.client.post(f"/v1/jobs/{job}/predict", json={"rows": [[1, 2, 3, 4]]},
                                headers={"Authorization": ""})
    assert anonymous.status_code == 401


# (body, status, field, words in the detail, models loaded: only checks that need the model load it)
BAD_BODIES = [
    pytest.param({}, 422, "rows", "send `rows`", 0, id="nothing"),
    pytest.param({"rows": [[1, 2, 3, 4]], "texts": ["a"]}, 422, "texts", "not both", 0, id="both"),
    pytest.param({"rows": []}, 422, "rows", "at least 1", 0, id="no-rows"),
    pytest.param({"rows": [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3]]}, 422, "rows.2", "3 numbers", 1,
                 id="short-row"),
    pytest.param({"rows": [[1, 2, "3", 4]]}, 422, "rows.0.2", "valid number", 0, id="string-number"),
    pytest.param({"rows": [[1, 2, True, 4]]}, 422, "rows.0.2", "valid number", 0, id="boolean"),
    pytest.param({"rows": [[1, 2, 3, 4]] * 6}, 413, "rows", "GLAI_MAX_PREDICT_ROWS", 0, id="too-many-rows"),
    pytest.param({"texts": ["a"] * 6}, 413, "texts", "GLAI_MAX_PREDICT_ROWS", 0, id="too-many-texts"),
    pytest.param({"texts": ["ok", "x" * 41]}, 413, "texts.1", "GLAI_MAX_PREDICT_TEXT_CHARS", 0,
                 id="long-text"),
    pytest.param({"texts": ["what a lovely day"]}, 422, "texts", "feature rows", 1, id="texts-for-features"),
    pytest.param({"artifact": "pruned-90", "rows": [[1, 2, 3, 4]]}, 404, "artifact",
                 "its models: baseline, trained", 0, id="no-such-model"),
    pytest.param({"artifact": "trained.onnx", "rows": [[1, 2, 3, 4]]}, 422, "artifact", "not a model", 0,
                 id="onnx-copy"),
    pytest.param({"artifact": "config.json", "rows": [[1, 2, 3, 4]]}, 422, "artifact", "json file", 0,
                 id="config"),
    pytest.param({"artifact": "", "rows": [[1, 2, 3, 4]]}, 422, "artifact", "at least 1", 0, id="empty-name"),
    pytest.param({"rows": [[1, 2, 3, 4]], "threshold": 0.5}, 422, "threshold", "Extra inputs", 0,
                 id="unknown"),
]


@pytest.mark.parametrize(("body", "status", "field", "words", "loads"), BAD_BODIES)
def test_bad_input_is_a_4xx_naming_the_field(make_api, model_files: dict[str, Path], body: dict,  # type: ignore[no-untyped-def]
                                              status: int, field: str, words: str, loads: int) -> None:
    api = make_api(predict_max_rows=5, predict_max_text_chars=40)
    job_id = insert_job(api, dataset_id(api), "succeeded")
    _store(api, job_id, "trained", model_files["trained"].read_bytes())
    _store(api, job_id, "baseline", model_files["baseline"].read_bytes())
    _store(api, job_id, "config.json", b"{}", f"jobs/{job_id}/config.json")
    _store(api, job_id, "trained.onnx", b"onnx", f"jobs/{job_id}/trained.onnx")
    response = _predict(api, job_id, **body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and words in response.json()["detail"], response.json()
    assert api.services.model_cache.loads == loads
    with api.session() as session:
        assert session.query(Artifact).filter_by(job_id=job_id).count() == 4  # nothing stored or removed


def test_texts_for_an_image_model_name_the_rows_instead(api: Api, model_files: dict[str, Path]) -> None:
    job_id = insert_job(api, dataset_id(api), "succeeded")
    _store(api, job_id, "trained", model_files["image"].read_bytes())
    response = _predict(api, job_id, texts=["a bag"])
    assert response.status_code == 422 and response.json()["field"] == "texts"
    assert "efficientnet-lite0" in response.json()["detail"] and "embeddings" in response.json()["detail"]
    # Its inputs are embeddings of the model's width: rows of them are fine.
    assert _predict(api, job_id, rows=[[0.1, 0.2, 0.3, 0.4]]).status_code == 200


def test_a_job_without_models_says_why(api: Api) -> None:
    running = insert_job(api, dataset_id(api), "running")
    response = _predict(api, running, rows=[[1, 2, 3, 4]])
    assert response.status_code == 404 and response.json()["field"] == "artifact"
    assert "the job is running" in response.json()["detail"]


@pytest.mark.parametrize("content", [b"not a model at all", b"\x80\x04\x95pickled"])
def test_a_file_that_is_no_model_is_refused_by_name(api: Api, content: bytes) -> None:
    job_id = insert_job(api, dataset_id(api), "succeeded", artifact=content)
    response = _predict(api, job_id, rows=[[1, 2, 3, 4]])
    assert response.status_code == 422 and response.json()["field"] == "artifact"
    assert "cannot be loaded as a model" in response.json()["detail"]
    assert len(api.services.model_cache) == 0


def test_a_model_file_gone_from_storage_is_a_410(api: Api, job: str) -> None:
    api.services.storage.delete_prefix(f"jobs/{job}/trained.safetensors")
    response = _predict(api, job, rows=[[1, 2, 3, 4]])
    assert response.status_code == 410 and response.json()["field"] == "artifact"


# ------------------------------------------------------------------------------- oversize bodies

def _rows_body(n: int) -> bytes:
    return json.dumps({"artifact": "trained", "rows": [[1.25, 2.5, 3.75, 4.125]] * n}).encode()


@pytest.mark.parametrize(("body", "field"), [
    (_rows_body(200_000), "rows"),
    (json.dumps({"texts": ["a, long: text with \\\"quotes\\\" and ]} brackets"] * 40_000}).encode(), "texts"),
    (json.dumps({"rows": [[1, 2, 3, 4]], "artifact": "x" * 2_000_000}).encode(), "artifact"),
])
def test_an_oversize_body_names_the_field_that_made_it_so(api: Api, job: str, body: bytes,
                                                          field: str) -> None:
    assert len(body) > api.services.settings.max_request_bytes
    response = api.client.post(f"/v1/jobs/{job}/predict", content=body,
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["field"] == field and "GLAI_MAX_REQUEST_BYTES" in response.json()["detail"]
    assert api.services.model_cache.loads == 0


def test_an_oversize_chunked_body_over_real_http_names_the_field(  # type: ignore[no-untyped-def]
        server, model_files: dict[str, Path]) -> None:
    api, base = server
    job_id = insert_job(api, dataset_id(api), "succeeded")
    _store(api, job_id, "trained", model_files["trained"].read_bytes())
    body = _rows_body(200_000)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is found while reading
        for start in range(0, len(body), 65_536):
            yield body[start:start + 65_536]

    with httpx.Client(base_url=base, headers=api.headers, timeout=60) as client:
        response = client.post(f"/v1/jobs/{job_id}/predict", content=chunks(),
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 413, response.text
        assert response.json()["field"] == "rows"
        fine = client.post(f"/v1/jobs/{job_id}/predict", content=_rows_body(3),
                           headers={"Content-Type": "application/json"})
        assert fine.status_code == 200 and len(fine.json()["classes"]) == 3


@pytest.mark.parametrize(("prefix", "field"), [
    (b'{"rows": [[1, 2], [3', "rows"),
    (b'{"artifact": "trained", "texts": ["a", "b\\", c": d', "texts"),
    (b'{"texts": ["x"], "rows": [[1]]', "rows"),
    (b'{"texts": ["{\\"rows\\": [", "y', "texts"),
    (b'{"art', None),
    (b'[1, 2, 3', None),
    (b"", None),
])
def test_field_at_cut(prefix: bytes, field: str | None) -> None:
    assert field_at_cut(prefix) == field


def test_deleting_a_job_forgets_its_loaded_models(api: Api, job: str) -> None:
    assert _predict(api, job, rows=[[5.1, 3.5, 1.4, 0.2]]).status_code == 200
    assert len(api.services.model_cache) == 1
    assert api.client.delete(f"/v1/jobs/{job}").status_code == 204
    assert len(api.services.model_cache) == 0
    assert _predict(api, job, rows=[[5.1, 3.5, 1.4, 0.2]]).status_code == 404
