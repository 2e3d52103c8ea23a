"""Frozen backbones through the whole service, offline: upload raw text / an image zip over HTTP, train
with a real Celery worker (embedding phase, then the GLAI phases), reuse the feature cache on the second
job, download the model and predict from raw texts and image files (library, client helper and CLI).
Bad raw uploads and mismatched backbones get a clear 4xx and leave nothing behind."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from glai_client.client import GlaiClient, GlaiError, Job
from glai_common.models import Dataset, FeatureCache
from glai_common.models import Job as JobRow
from glai_core.artifacts import read_metadata
from glai_core.predict import Predictor
from tests.backbones import corpus
from tests.backbones.conftest import Service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Seconds on two shared cores; the head is small, the point is the embedding plumbing.
TINY: dict[str, Any] = {
    "architecture": {"hidden": [64]},
    "structural": {"max_epochs": 20, "min_epochs": 5, "batch_size": 32, "probe_size": 200},
    "quantitative": {"epochs": 5, "batch_size": 32},
    "pruning": {"enabled": False},
    "baseline": {"enabled": False},
    "validation_fraction": 0.25,
    "seed": 0,
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _wait(service: Service, client: GlaiClient, job_id: str) -> Job:
    job = client.wait(job_id, timeout=150, poll_s=0.3)
    assert job["state"] == "succeeded", (job.get("failure_kind"), job.get("failure_message"), service.tails())
    return job


def _phases(job: Job) -> list[str]:
    return [t["to_value"] for t in job["transitions"] if t["field"] == "phase"]


def _cli(service: Service, *args: str) -> str:
    from glai_client.cli import app

    env = {"GLAI_API_URL": service.url, "GLAI_API_KEY": service.key}
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _accuracy(predicted: list[str], truth: list[str]) -> float:
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


def test_the_network_is_cut_off(service: Service) -> None:
    with pytest.raises(OSError, match="network access is disabled"):
        socket.create_connection(("203.0.113.7", 443), timeout=2)
    probe = "import socket; socket.create_connection(('203.0.113.7', 443), timeout=2)"
    child = subprocess.run([sys.executable, "-c", probe], env=service.env, capture_output=True, text=True,
                           timeout=60)
    assert child.returncode != 0 and "network access is disabled" in child.stderr


def test_text_dataset_trains_with_minilm_reuses_the_cache_and_predicts_raw_texts(
        service: Service, tmp_path: Path) -> None:
    split = corpus.sentiment_texts(per_class=150)
    csv = corpus.write_text_csv(tmp_path / "reviews.csv", split.train)
    with service.client() as client:
        ds = client.upload_dataset(csv, kind="text", text_column="review", label_column="sentiment")
        assert (ds["kind"], ds["file_format"], ds["text_column"], ds["label_column"]) == (
            "text", "csv", "review", "sentiment")
        assert (ds["n_samples"], ds["n_features"], ds["n_classes"]) == (len(split.train), 384, 2)
        assert ds["class_names"] == ["negative", "positive"]
        assert {p.name for p in (service.storage / "datasets" / ds["id"]).iterdir()} == {"raw.csv"}

        first = _wait(service, client, client.submit_job(ds["id"], {**TINY, "backbone": "minilm"})["id"])
        assert first["spec"]["backbone"] == "minilm"
        assert _phases(first)[:2] == ["embedding", "structural"], _phases(first)
        curves = client.curves(first["id"], phase="embedding")
        embedded = {s["key"]: s["points"] for s in curves["series"]}
        assert embedded["embedded_samples"][-1]["value"] == len(split.train)
        steps = [p["step"] for p in embedded["embedded_samples"]]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 1  # one point per batch
        assert "[embedding] done" in client.logs(first["id"])["text"]

        second = _wait(service, client, client.submit_job(ds["id"], {**TINY, "backbone": "minilm",
                                                                    "seed": 1})["id"])
        assert "embedding" not in _phases(second) and _phases(second)[0] == "structural"
        assert "reusing cached minilm features" in client.logs(second["id"])["text"]
        assert not client.curves(second["id"], phase="embedding")["series"]
        engine = create_engine(service.database_url)
        with Session(engine) as session:
            caches = session.scalars(select(FeatureCache).where(FeatureCache.dataset_id == ds["id"])).all()
        engine.dispose()
        assert [(c.backbone, c.n_features, c.storage_key) for c in caches] == [
            ("minilm", 384, f"features/{ds['id']}/minilm")]

        model = client.model_file(first["id"], "trained", tmp_path / "models")
        metadata = read_metadata(model)
        assert metadata["backbone"]["name"] == "minilm"
        preprocessing = metadata["backbone"]["preprocessing"]
        assert (preprocessing["dim"], preprocessing["max_tokens"], preprocessing["normalisation"]) == (
            384, 256, "l2")
        texts = [text for text, _ in split.test]
        truth = [label for _, label in split.test]
        labels = client.predict(first["id"], texts, directory=tmp_path / "models")
        # The same raw texts, embedded and classified by the API process (offline, like the worker),
        # also by several requests at once (one tokenizer per process).
        remote = client.predict_remote(first["id"], texts=texts)
        def remote_classes(part: list[str]) -> list[str]:
            with service.client() as own:
                return own.predict_remote(first["id"], texts=part)["classes"]

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(remote_classes, [texts[i::4] for i in range(4)]))
    assert _accuracy(labels, truth) >= 0.65, (split.source, _accuracy(labels, truth))
    assert Predictor.load(model).predict(texts) == labels
    assert remote["classes"] == labels and remote["class_names"] == ["negative", "positive"]
    assert answers == [labels[i::4] for i in range(4)]
    expected = Predictor.load(model).predict_proba(texts)
    assert max(abs(p - e) for row, want in zip(remote["probabilities"], expected, strict=True)
               for p, e in zip(row, want, strict=True)) < 1e-5

    # The CLI: a .txt of texts, a table with --text-column, then watch and plot.
    one_line = [" ".join(t.split()) for t in texts[:10]]
    (tmp_path / "texts.txt").write_text("\n".join(one_line) + "\n")
    assert _cli(service, "predict", str(model), str(tmp_path / "texts.txt")).split() == \
        Predictor.load(model).predict(one_line)
    corpus.write_text_csv(tmp_path / "new.csv", split.test[:5], text_column="tweet")
    out = _cli(service, "predict", str(model), str(tmp_path / "new.csv"), "--text-column", "tweet")
    assert out.split("\n")[:5] == labels[:5]
    watched = _cli(service, "watch", first["id"])
    assert "embedding" in watched and "structural" in watched and "succeeded" in watched
    _cli(service, "plot", first["id"], str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


def test_image_zip_trains_with_efficientnet_and_predicts_image_files(service: Service,
                                                                     tmp_path: Path) -> None:
    train, test = corpus.fashion_images(per_class=30, test_per_class=10)
    archive = corpus.write_class_zip(tmp_path / "fashion.zip", train)
    with service.client() as client:
        ds = client.upload_dataset(archive, kind="images")
        described = (ds["kind"], ds["file_format"], ds["n_samples"], ds["n_features"])
        assert described == ("images", "zip", 90, 1280)
        assert ds["class_names"] == ["Bag", "Sneaker", "Trouser"]
        submitted = client.submit_job(ds["id"], {**TINY, "backbone": "efficientnet-lite0"})
        job = _wait(service, client, submitted["id"])
        assert _phases(job)[0] == "embedding"
        model = client.model_file(job["id"], "trained", tmp_path / "models")
    metadata = read_metadata(model)
    assert metadata["backbone"]["name"] == "efficientnet-lite0"
    assert metadata["backbone"]["preprocessing"]["input_size"] == 96

    images = tmp_path / "new"
    truth: list[str] = []
    for name, blobs in test.items():
        for i, blob in enumerate(blobs):
            (images / name.lower()).mkdir(parents=True, exist_ok=True)
            (images / name.lower() / f"{i:02d}.png").write_bytes(blob)
    files = sorted(p for p in images.rglob("*.png"))
    truth = [next(n for n in test if n.lower() == f.parent.name) for f in files]
    predictor = Predictor.load(model)
    labels = predictor.predict(files)
    assert _accuracy(labels, truth) >= 0.6, _accuracy(labels, truth)  # chance: 1/3
    assert predictor.predict([f.read_bytes() for f in files]) == labels

    lines = _cli(service, "predict", str(model), str(images)).strip().split("\n")
    assert [line.split("\t") for line in lines] == [
        [str(f.relative_to(images)), label] for f, label in zip(files, labels, strict=True)]
    single = _cli(service, "predict", str(model), str(files[0])).strip()
    assert single == f"{files[0].name}\t{labels[0]}"


# ------------------------------------------------------------------------------------------- bad input

def _png() -> bytes:
    return corpus.fashion_images(per_class=1, test_per_class=0)[0]["Bag"][0]


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, blob in members.items():
            archive.writestr(zipfile.ZipInfo(name), blob)
    return buffer.getvalue()


def _csv(rows: list[tuple[str, str]]) -> bytes:
    return ("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows)).encode()


GOOD_ROWS = [(t, "positive") for t in corpus.POSITIVE[:4]] + [(t, "negative") for t in corpus.NEGATIVE[:4]]


def _bad_uploads() -> list[Any]:
    png = _png()
    return [
        pytest.param("damaged.zip", _zip({"bag/1.png": png, "bag/2.png": b"\x89PNG not really",
                                          "shoe/1.png": png}), {"kind": "images"},
                     "file", "cannot decode image 'bag/2.png'", id="unreadable-image"),
        pytest.param("slip.zip", _zip({"bag/1.png": png, "../../etc/shoe.png": png}), {"kind": "images"},
                     "file", "unsafe path in zip", id="zip-slip"),
        pytest.param("blank.csv", _csv([*GOOD_ROWS, ("   ", "positive")]), {"kind": "text"},
                     "text_column", "empty or whitespace-only text", id="empty-text"),
        pytest.param("nolabel.csv", _csv(GOOD_ROWS), {"kind": "text", "label_column": "sentiment"},
                     "label_column", "column 'sentiment' not found", id="missing-label-column"),
        pytest.param("notext.csv", _csv(GOOD_ROWS), {"kind": "text", "text_column": "review"},
                     "text_column", "column 'review' not found", id="missing-text-column"),
        pytest.param("images.csv", _csv(GOOD_ROWS), {"kind": "images"}, "file", ".zip",
                     id="table-as-images"),
    ]


def _stored_dataset_dirs(service: Service) -> set[str]:
    root = service.storage / "datasets"
    return {p.name for p in root.iterdir()} if root.exists() else set()


@pytest.mark.parametrize(("filename", "content", "fields", "field", "words"), _bad_uploads())
def test_bad_raw_uploads_are_a_clear_4xx_and_store_nothing(service: Service, filename: str, content: bytes,
                                                           fields: dict[str, str], field: str,
                                                           words: str) -> None:
    key = service.new_key(f"bad-{filename}")
    before = _stored_dataset_dirs(service)
    with GlaiClient(service.url, key) as client:
        response = client._http.post("/v1/datasets", data={"name": filename, **fields},
                                     files={"file": (filename, content, "application/octet-stream")})
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["field"] == field and words in body["detail"], body
        assert client.list_datasets()["items"] == []
    assert _stored_dataset_dirs(service) == before
    tmp = service.data_dir / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir())
    engine = create_engine(service.database_url)
    with Session(engine) as session:
        rows = session.scalar(select(func.count()).select_from(Dataset)
                              .where(Dataset.owner == f"bad-{filename}"))
    engine.dispose()
    assert rows == 0


def test_a_job_must_name_the_backbone_its_dataset_needs(service: Service, tmp_path: Path) -> None:
    owner = "backbone-mismatch"
    with GlaiClient(service.url, service.new_key(owner)) as client:
        text = client.upload_dataset(corpus.write_text_csv(tmp_path / "t.csv", GOOD_ROWS, "text", "label"),
                                     kind="text")
        assert (text["text_column"], text["label_column"]) == ("text", "label")  # the defaults
        features = client.builtin_dataset("iris")
        cases = [(text["id"], None, "needs backbone 'minilm'"),
                 (text["id"], "efficientnet-lite0", "needs backbone 'minilm'"),
                 (features["id"], "minilm", "takes no backbone"),
                 (text["id"], "resnet50", "")]
        for dataset_id, backbone, words in cases:
            with pytest.raises(GlaiError) as caught:
                client.submit_job(dataset_id, {**TINY, "backbone": backbone})
            assert caught.value.status == 422 and caught.value.field == "backbone", caught.value
            assert words in caught.value.detail
        assert client.list_jobs()["items"] == []
    engine = create_engine(service.database_url)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(JobRow).where(JobRow.owner == owner)) == 0
    engine.dispose()
