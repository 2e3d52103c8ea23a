"""Bad input over HTTP, against the real app: every hostile or broken upload and job request is refused
with the expected status and a message that names the problem -- and leaves nothing behind: no dataset or
job row, no idempotency key, nothing enqueued, no file in storage or in the upload temp directory.

The bad data files are the core corpus (tests/core/test_data_corpus.py), imported rather than copied, so
a case added there is exercised through the API too. The HTTP-only cases (transport, form, names, limits)
are built here.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from glai_common.models import Dataset, IdempotencyKey, Job
from tests.api.helpers import Api, csv_bytes, dataset_id, npz_bytes
from tests.core.test_data_corpus import CASES as CORE_CASES
from tests.core.test_data_corpus import Case as CoreCase

UPLOAD_LIMIT = 200_000


@pytest.fixture
def small_api(make_api: Callable[..., Api]) -> Api:
    """Limits small enough to cross in a test: 200 kB uploads, 64 kB JSON bodies, 64 MiB per job."""
    return make_api(
        max_upload_bytes=UPLOAD_LIMIT,
        max_request_bytes=64 * 1024,
        max_job_memory_bytes=64 * 1024**2,
        max_epochs=500,
        max_job_time_limit_s=3600,
    )


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_nothing_stored(api: Api, storage_before: list[Path]) -> None:
    with api.session() as session:
        assert (
            session.scalar(select(func.count()).select_from(Dataset).where(Dataset.owner == api.owner)) == 0
        )
        assert session.scalar(select(func.count()).select_from(Job).where(Job.owner == api.owner)) == 0
        assert (
            session.scalar(
                select(func.count()).select_from(IdempotencyKey).where(IdempotencyKey.owner == api.owner)
            )
            == 0
        )
    assert api.enqueued == []
    assert _files(api.storage_root) == storage_before
    assert _files(api.tmp_dir) == [], _files(api.tmp_dir)
    assert [p for p in api.tmp_dir.iterdir()] == [] if api.tmp_dir.exists() else True


def assert_refused(
    api: Api,
    response: Any,
    status: int,
    fragments: list[str],
    where: str | None = None,
    storage_before: list[Path] | None = None,
) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"detail", "field"} and isinstance(body["detail"], str)
    for fragment in fragments:
        assert fragment.lower() in body["detail"].lower(), (fragment, body["detail"])
    if where is not None:
        assert body["field"] == where, body
    assert_nothing_stored(api, storage_before or [])


# ------------------------------------------------------------------------------- the core data corpus

# The core corpus calls load_file directly; through the API a few cases read differently:
HTTP_VIEW: dict[str, tuple[list[str], str | None]] = {
    # the extension decides the format before load_file is reached
    "unknown-format": (["cannot tell the format", ".npz"], "file"),
    # the deployment's decompression limit (4 x GLAI_MAX_UPLOAD_BYTES), named as a setting
    "npz-lying-zip-bomb": (["zip bomb", "GLAI_MAX_DECOMPRESSED_BYTES"], "file"),
}
HTTP_STATUS = {"npz-lying-zip-bomb": 413}  # too big to unfold, not malformed
SKIPPED = {  # need a load_file argument the API does not expose (a 1 MB decompression limit)
    case.name for case in CORE_CASES if case.kwargs
}
HTTP_CASES = [case for case in CORE_CASES if case.name not in SKIPPED]


@pytest.mark.parametrize("case", HTTP_CASES, ids=[case.name for case in HTTP_CASES])
def test_core_corpus_file_is_refused_over_http(api: Api, case: CoreCase, tmp_path: Path) -> None:
    path = tmp_path / f"upload.{case.file_format}"
    case.build(path)
    data = {"label_column": case.label_column} if case.label_column else {}
    before = _files(api.storage_root)
    response = api.client.post("/v1/datasets", files={"file": (path.name, path.read_bytes())}, data=data)
    fragments, where = HTTP_VIEW.get(case.name, (case.expect, case.where))
    assert_refused(api, response, HTTP_STATUS.get(case.name, 422), fragments, where, before)


def test_the_corpus_is_large_enough() -> None:
    assert len(HTTP_CASES) + len(UPLOAD_CASES) + len(JOB_CASES) >= 100
    assert len(HTTP_CASES) >= 40


# ----------------------------------------------------------------------- uploads: form, transport, names


def _npz_with(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _object_npz_declared_as_float() -> bytes:
    """X.npy's header says object dtype: refused by dtype, never unpickled (allow_pickle stays False)."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "|O", "fortran_order": False, "shape": (3, 2)})
    member.write(b"\x80\x04K\x01.")  # a pickle opcode stream; must never be executed
    y = io.BytesIO()
    np.save(y, np.array([0, 1, 0]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("X.npy", member.getvalue())
        archive.writestr("y.npy", y.getvalue())
    return out.getvalue()


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZb0undary") -> bytes:
    lines = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        lines.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
        )
    return b"".join(lines) + f"--{boundary}--\r\n".encode()


MULTIPART = {"Content-Type": "multipart/form-data; boundary=XyZb0undary"}


def _chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@dataclass
class Upload:
    name: str
    send: Callable[[Api], Any]
    status: int
    expect: list[str]
    where: str | None = None


def _post_file(filename: str, content: bytes, **data: str) -> Callable[[Api], Any]:
    return lambda api: api.client.post("/v1/datasets", files={"file": (filename, content)}, data=data)


def _post_raw(body: bytes | Callable[[], Iterator[bytes]], headers: dict[str, str]) -> Callable[[Api], Any]:
    return lambda api: api.client.post(
        "/v1/datasets", content=body() if callable(body) else body, headers=headers
    )


BIG = b"0" * (UPLOAD_LIMIT + 1)
UPLOAD_CASES = [
    Upload("too-large", _post_file("big.csv", BIG), 413, ["exceeds the limit", "200000 bytes"], "file"),
    # NUL bytes would reach PostgreSQL (which refuses them) as a 500; they are refused at the form
    Upload(
        "nul-in-file-name",
        _post_raw(_multipart([("file", "a\x00b.npz", npz_bytes())]), MULTIPART),
        422,
        ["nul character"],
        "file",
    ),
    Upload(
        "nul-in-name-field",
        _post_raw(_multipart([("file", "a.npz", npz_bytes()), ("name", None, b"x\x00y")]), MULTIPART),
        422,
        ["nul character"],
        "name",
    ),
    Upload(
        "too-large-chunked-no-length",
        _post_raw(lambda: _chunks(_multipart([("file", "big.csv", BIG)])), MULTIPART),
        413,
        ["exceeds the limit"],
        "file",
    ),
    Upload(
        "too-many-parts",
        _post_raw(_multipart([(f"f{i}", None, b"x") for i in range(40)]), MULTIPART),
        413,
        ["more than 16 parts"],
    ),
    Upload(
        "field-too-large",
        _post_raw(_multipart([("name", None, b"n" * 70_000)]), MULTIPART),
        413,
        ["form field 'name'"],
        "name",
    ),
    Upload(
        "no-file-part",
        _post_raw(_multipart([("name", None, b"only a name")]), MULTIPART),
        422,
        ["no file in the upload"],
        "file",
    ),
    Upload(  # the npz's bytes hold NULs: this used to be refused as "contains a NUL character"
        "file-in-another-field",
        _post_raw(_multipart([("data", "train.npz", npz_bytes())]), MULTIPART),
        422,
        ["'data' carries a file", "in the multipart field 'file'"],
        "file",
    ),
    Upload(
        "second-file-in-another-field",
        _post_raw(_multipart([("file", "a.csv", csv_bytes()), ("labels", "y.csv", b"label\n1\n")]),
                  MULTIPART),
        422,
        ["'labels' carries a file"],
        "file",
    ),
    Upload(
        "binary-part-without-file-name",
        _post_raw(b"--XyZb0undary\r\nContent-Disposition: form-data; name=\"dataset\"\r\nContent-Type: "
                  b"application/octet-stream\r\n\r\n" + npz_bytes() + b"\r\n--XyZb0undary--\r\n", MULTIPART),
        422,
        ["'dataset' carries a file", "'file'"],
        "file",
    ),
    Upload(
        "binary-in-a-text-field",
        _post_raw(_multipart([("file", "a.npz", npz_bytes()), ("label_column", None, b"y\x00\x01")]),
                  MULTIPART),
        422,
        ["contains a nul character", "goes in 'file'"],
        "label_column",
    ),
    Upload(
        "two-files",
        _post_raw(_multipart([("file", "a.csv", csv_bytes()), ("file", "b.csv", csv_bytes())]), MULTIPART),
        422,
        ["exactly one file"],
        "file",
    ),
    Upload(
        "not-multipart",
        lambda api: api.client.post("/v1/datasets", json={"file": "x"}),
        415,
        ["multipart/form-data"],
    ),
    Upload(
        "multipart-without-boundary",
        _post_raw(b"--x--", {"Content-Type": "multipart/form-data"}),
        415,
        ["multipart/form-data"],
    ),
    Upload(
        "truncated-multipart",
        _post_raw(_multipart([("file", "a.csv", csv_bytes())])[:-40], MULTIPART),
        400,
        ["ended in the middle"],
    ),
    Upload(
        "unknown-kind", _post_file("a.csv", csv_bytes(), kind="video"), 422, ["unknown dataset kind"], "kind"
    ),
    Upload(
        "unsupported-format-field",
        _post_file("a.csv", csv_bytes(), format="xlsx"),
        422,
        ["format 'xlsx' is not supported"],
        "format",
    ),
    Upload("no-extension", _post_file("data", csv_bytes()), 422, ["cannot tell the format"], "file"),
    Upload(
        "name-too-long", _post_file("a.csv", csv_bytes(), name="n" * 300), 422, ["longer than 256"], "name"
    ),
    Upload(
        "path-traversal-bad-content",
        _post_file("../../../../tmp/evil.npz", b"not a zip"),
        422,
        ["not a valid .npz"],
    ),
    Upload("absolute-path-bad-content", _post_file("/etc/passwd.csv", b"root:x:0:0\n"), 422, []),
    Upload("dotdot-filename", _post_file("..", csv_bytes()), 422, ["cannot tell the format"], "file"),
    Upload("windows-path", _post_file("..\\..\\evil.parquet", b"PAR1junk"), 422, ["not a valid parquet"]),
    Upload(
        "gzip-disguised-as-csv",
        _post_file("data.csv", __import__("gzip").compress(b"a,b,label\n" + b"1,2,x\n" * 50_000)),
        422,
        ["not utf-8"],
        "file",
    ),
    Upload(
        "gzip-extension",
        _post_file("data.csv.gz", b"\x1f\x8b\x08\x00"),
        422,
        ["cannot tell the format"],
        "file",
    ),
    Upload(
        "object-dtype-npz",
        _post_file("obj.npz", _object_npz_declared_as_float()),
        422,
        ["python objects"],
        "X",
    ),
    Upload(
        "ragged-labels-npz",
        _post_file("r.npz", _npz_with(X=np.ones((6, 2)), y=np.array([0, 1]))),
        422,
        ["6 rows", "2 labels"],
        "y",
    ),
    Upload(
        "latin1-csv",
        _post_file("l.csv", "a,b,label\n1,2,café\n3,4,thé\n".encode("latin-1")),
        422,
        ["not utf-8"],
    ),
]


@pytest.mark.parametrize("case", UPLOAD_CASES, ids=[case.name for case in UPLOAD_CASES])
def test_bad_upload_is_refused(small_api: Api, case: Upload) -> None:
    before = _files(small_api.storage_root)
    assert_refused(small_api, case.send(small_api), case.status, case.expect, case.where, before)


@pytest.mark.parametrize(
    "filename",
    [
        "../../../../escape.npz",
        "/tmp/abs.npz",
        "..\\..\\win.npz",
        "a/../../b.npz",
        "%2e%2e%2fenc.npz",
        "nul\x00byte.npz",
    ],
)
def test_path_like_file_names_are_display_strings_only(api: Api, filename: str) -> None:
    data_dir = api.services.settings.data_dir
    outside = sorted(data_dir.parent.rglob("*"))
    response = api.client.post(
        "/v1/datasets", files={"file": (filename, npz_bytes())}, data={"name": "../../../named.npz"}
    )
    assert response.status_code == 201, response.text
    row = response.json()
    assert row["name"] == "../../../named.npz"  # kept verbatim as a label, used for nothing else
    stored = _files(api.storage_root)
    assert {p.relative_to(api.storage_root).parent.as_posix() for p in stored} == {f"datasets/{row['id']}"}
    assert {p.name for p in stored} <= {"X.npy", "y.npy", "X_val.npy", "y_val.npy", "meta.json"}
    new_outside = [
        p
        for p in sorted(data_dir.parent.rglob("*"))
        if p not in outside and data_dir not in p.parents and p != data_dir
    ]
    assert new_outside == []
    assert _files(api.tmp_dir) == []
    without_name = api.client.post("/v1/datasets", files={"file": (filename, npz_bytes())})
    assert without_name.status_code == 201
    assert "/" not in without_name.json()["name"] and "\\" not in without_name.json()["name"]


# ------------------------------------------------------------------------------------------ job requests


@dataclass
class JobCase:
    name: str
    body: dict[str, Any] | Callable[[str], Any]  # a dict merged over {"dataset_id": ds}, or raw bytes
    status: int
    expect: list[str]
    where: str | None = None
    headers: dict[str, str | bytes] = field(default_factory=dict)


def _raw(text: str | bytes) -> Callable[[str], bytes]:
    """A body sent byte for byte (for what json= cannot produce); DS stands for the dataset id."""

    def build(ds: str) -> bytes:
        return text.replace("DS", ds).encode() if isinstance(text, str) else text

    return build


JOB_CASES = [
    # architecture and limits of the deployment
    JobCase(
        "too-many-layers",
        {"architecture": {"hidden": [4] * 5}},
        422,
        ["at most 4 hidden layers"],
        "architecture.hidden",
    ),
    JobCase(
        "too-wide",
        {"architecture": {"hidden": [70_000]}},
        422,
        ["65536", "GLAI_MAX_HIDDEN_WIDTH"],
        "architecture.hidden.0",
    ),
    JobCase(
        "too-many-params",
        {"architecture": {"hidden": [65_536, 65_536], "reduction_factor": 1}},
        422,
        ["trainable parameters", "GLAI_MAX_TRAINABLE_PARAMS"],
        "architecture.hidden",
    ),
    JobCase(
        "memory-estimate",
        {"architecture": {"hidden": [2048, 2048], "reduction_factor": 1}},
        422,
        ["estimated", "GiB of device memory", "GLAI_MAX_JOB_MEMORY_BYTES"],
    ),
    JobCase(
        "memory-batch",
        {
            "architecture": {"hidden": [512]},
            "baseline": {"batch_size": 1_000_000},
            "structural": {"batch_size": 1_000_000},
        },
        422,
        ["estimated", "device memory"],
    ),
    JobCase(
        "r-widens-past-limit",
        {"architecture": {"hidden": [60_000], "reduction_factor": 0.5}},
        422,
        ["GLAI hidden width 120000"],
        "architecture.reduction_factor",
    ),
    JobCase(
        "empty-hidden", {"architecture": {"hidden": []}}, 422, ["at least 1 item"], "architecture.hidden"
    ),
    JobCase("zero-width", {"architecture": {"hidden": [0]}}, 422, ["at least 1"], "architecture.hidden"),
    JobCase(
        "r-zero",
        {"architecture": {"reduction_factor": 0}},
        422,
        ["'auto', 'adaptive' or a finite number"],
        "architecture.reduction_factor",
    ),
    JobCase(
        "r-negative",
        {"architecture": {"reduction_factor": -3}},
        422,
        ["from 0.01 to 10000"],
        "architecture.reduction_factor",
    ),
    JobCase(
        "r-huge",
        {"architecture": {"reduction_factor": 1e300}},
        422,
        ["from 0.01"],
        "architecture.reduction_factor",
    ),
    JobCase(
        "r-word",
        {"architecture": {"reduction_factor": "fast"}},
        422,
        ["'auto'"],
        "architecture.reduction_factor",
    ),
    JobCase(
        "r-nan",
        _raw('{"dataset_id": "DS", "architecture": {"reduction_factor": NaN}}'),
        422,
        ["finite"],
        "architecture.reduction_factor",
    ),
    # epochs and time
    JobCase(
        "structural-epochs",
        {"structural": {"max_epochs": 501}},
        422,
        ["above the limit of 500"],
        "structural.max_epochs",
    ),
    JobCase(
        "quantitative-epochs",
        {"quantitative": {"epochs": 10_000}},
        422,
        ["GLAI_MAX_EPOCHS"],
        "quantitative.epochs",
    ),
    JobCase(
        "finetune-epochs",
        {"pruning": {"finetune_epochs": 501}},
        422,
        ["GLAI_MAX_EPOCHS"],
        "pruning.finetune_epochs",
    ),
    JobCase(
        "baseline-epochs",
        {"baseline": {"max_epochs": 10**12}},
        422,
        ["GLAI_MAX_EPOCHS"],
        "baseline.max_epochs",
    ),
    JobCase(
        "zero-epochs",
        {"structural": {"max_epochs": 0}},
        422,
        ["greater than or equal to 1"],
        "structural.max_epochs",
    ),
    JobCase("min-above-max", {"structural": {"min_epochs": 9, "max_epochs": 3}}, 422, ["min_epochs"]),
    JobCase("time-over-limit", {"time_limit_s": 3601}, 422, ["GLAI_MAX_JOB_TIME_LIMIT_S"], "time_limit_s"),
    JobCase("time-zero", {"time_limit_s": 0}, 422, ["greater than or equal to 1"], "time_limit_s"),
    JobCase("time-negative", {"time_limit_s": -5}, 422, [], "time_limit_s"),
    # learning rates, batches, sparsities, seeds, fractions
    JobCase("lr-zero", {"structural": {"lr": 0}}, 422, ["greater than 0"], "structural.lr"),
    JobCase("lr-negative", {"quantitative": {"lr": -0.1}}, 422, ["greater than 0"], "quantitative.lr"),
    JobCase("lr-too-big", {"baseline": {"lr": 11}}, 422, ["less than or equal to 10"], "baseline.lr"),
    JobCase(
        "lr-infinite",
        _raw('{"dataset_id": "DS", "pruning": {"lr": Infinity}}'),
        422,
        ["finite"],
        "pruning.lr",
    ),
    JobCase(
        "lr-nan", _raw('{"dataset_id": "DS", "structural": {"lr": NaN}}'), 422, ["finite"], "structural.lr"
    ),
    JobCase(
        "ridge-infinite",
        _raw('{"dataset_id": "DS", "quantitative": {"ridge_lambda": -Infinity}}'),
        422,
        ["finite"],
        "quantitative.ridge_lambda",
    ),
    JobCase(
        "weight-decay-negative", {"structural": {"weight_decay": -1}}, 422, [], "structural.weight_decay"
    ),
    JobCase("batch-zero", {"structural": {"batch_size": 0}}, 422, [], "structural.batch_size"),
    JobCase(
        "batch-huge", {"quantitative": {"batch_size": 10**7}}, 422, ["1000000"], "quantitative.batch_size"
    ),
    JobCase(
        "sparsity-one",
        {"pruning": {"sparsities": [0.5, 1.0]}},
        422,
        ["strictly between 0 and 1"],
        "pruning.sparsities",
    ),
    JobCase(
        "sparsity-zero", {"pruning": {"sparsities": [0]}}, 422, ["between 0 and 1"], "pruning.sparsities"
    ),
    JobCase(
        "sparsity-nan",
        _raw('{"dataset_id": "DS", "pruning": {"sparsities": [NaN]}}'),
        422,
        ["finite"],
        "pruning.sparsities.0",
    ),
    JobCase(
        "too-many-sparsities",
        {"pruning": {"sparsities": [i / 100 for i in range(1, 30)]}},
        422,
        ["at most 20"],
        "pruning.sparsities",
    ),
    JobCase("seed-negative", {"seed": -1}, 422, [], "seed"),
    JobCase("seed-too-big", {"seed": 2**31}, 422, ["2147483647"], "seed"),
    JobCase("validation-zero", {"validation_fraction": 0}, 422, [], "validation_fraction"),
    JobCase("validation-one", {"validation_fraction": 1}, 422, [], "validation_fraction"),
    JobCase("precision-unknown", {"precision": "fp16"}, 422, ["'bf16'"], "precision"),
    JobCase("solver-unknown", {"quantitative": {"solver": "sgd"}}, 422, ["'adam'"], "quantitative.solver"),
    JobCase("probe-huge", {"structural": {"probe_size": 10**9}}, 422, [], "structural.probe_size"),
    JobCase("patience-zero", {"baseline": {"patience": 0}}, 422, [], "baseline.patience"),
    # a job's name and tags
    JobCase("name-empty", {"name": ""}, 422, ["at least 1 character"], "name"),
    JobCase("name-too-long", {"name": "n" * 257}, 422, ["at most 256"], "name"),
    JobCase("name-control-character", {"name": "a\nb"}, 422, ["pattern"], "name"),
    JobCase("name-nul", {"name": "a\x00b"}, 422, [], "name"),
    JobCase("name-not-text", {"name": 7}, 422, ["valid string"], "name"),
    JobCase("tags-not-a-list", {"tags": "a,b"}, 422, ["valid list"], "tags"),
    JobCase("tag-too-long", {"tags": ["t" * 65]}, 422, ["at most 64"], "tags.0"),
    JobCase("tag-empty", {"tags": ["ok", ""]}, 422, ["at least 1 character"], "tags.1"),
    JobCase("tag-nul", {"tags": ["a\x00"]}, 422, ["pattern"], "tags.0"),
    JobCase("tag-not-text", {"tags": [1]}, 422, ["valid string"], "tags.0"),
    JobCase("too-many-tags", {"tags": [f"t{i}" for i in range(33)]}, 422, ["at most 32"], "tags"),
    # shape of the request itself
    JobCase("unknown-field", {"learning_rate": 1}, 422, ["not permitted"], "learning_rate"),
    JobCase("wrong-type", {"seed": "one"}, 422, ["valid integer"], "seed"),
    # strict types: what the schema calls an integer, a boolean or a number is one, never a look-alike
    JobCase("seed-numeric-string", {"seed": "0"}, 422, ["valid integer"], "seed"),
    JobCase("hidden-bool", {"architecture": {"hidden": [True]}}, 422, ["valid integer"],
            "architecture.hidden.0"),
    JobCase("enabled-word", {"baseline": {"enabled": "yes"}}, 422, ["valid boolean"], "baseline.enabled"),
    JobCase("enabled-number", {"pruning": {"enabled": 1}}, 422, ["valid boolean"], "pruning.enabled"),
    JobCase("epochs-numeric-string", {"pruning": {"finetune_epochs": "3"}}, 422, ["valid integer"],
            "pruning.finetune_epochs"),
    JobCase("time-limit-float", {"time_limit_s": 60.5}, 422, ["valid integer"], "time_limit_s"),
    JobCase("fraction-string", {"validation_fraction": "0.5"}, 422, ["valid number"], "validation_fraction"),
    JobCase("sparsity-string", {"pruning": {"sparsities": ["0.5"]}}, 422, ["valid number"],
            "pruning.sparsities.0"),
    JobCase("r-numeric-string", {"architecture": {"reduction_factor": "4"}}, 422, ["'auto'"],
            "architecture.reduction_factor"),
    JobCase("hidden-not-list", {"architecture": {"hidden": 256}}, 422, ["valid list"], "architecture.hidden"),
    JobCase("no-dataset", lambda ds: b"{}", 422, ["field required"], "dataset_id"),
    JobCase("unknown-dataset", lambda ds: {"dataset_id": "0" * 32}, 404, ["not found"], "dataset_id"),
    JobCase("non-id-dataset", lambda ds: {"dataset_id": "../datasets/x"}, 404, ["not found"], "dataset_id"),
    JobCase("nul-dataset", lambda ds: {"dataset_id": ds[:8] + "\x00"}, 422, ["nul"], "dataset_id"),
    JobCase("malformed-json", _raw('{"dataset_id": "DS",'), 400, ["not valid json"]),
    JobCase("not-an-object", _raw("[1, 2, 3]"), 422, ["dictionary or object"]),
    JobCase("not-utf8", _raw(b'{"dataset_id": "\xff\xfe"}'), 400, ["not valid json"]),
    JobCase(
        "body-too-large", lambda ds: {"dataset_id": ds, "pad": "x" * 70_000}, 413, ["GLAI_MAX_REQUEST_BYTES"]
    ),
    JobCase(
        "body-too-large-chunked",
        lambda ds: lambda: _chunks(json.dumps({"dataset_id": ds, "p": "x" * 70_000}).encode()),
        413,
        ["65536 bytes"],
    ),
    JobCase(
        "wrong-content-type",
        lambda ds: ("text/plain", json.dumps({"dataset_id": ds}).encode()),
        415,
        ["application/json"],
    ),
    JobCase(
        "idempotency-key-non-ascii",
        {},
        422,
        [],
        "idempotency-key",
        headers={"Idempotency-Key": "ключ".encode()},
    ),  # type: ignore[dict-item]
    JobCase(
        "idempotency-key-too-long",
        {},
        422,
        ["256"],
        "idempotency-key",
        headers={"Idempotency-Key": "k" * 257},
    ),
]


def _send_job(api: Api, case: JobCase, ds: str) -> Any:
    headers = {"Idempotency-Key": "corpus-key", **case.headers}
    body = case.body(ds) if callable(case.body) else {"dataset_id": ds, **case.body}
    if isinstance(body, tuple):  # (content type, bytes)
        return api.client.post("/v1/jobs", content=body[1], headers={**headers, "Content-Type": body[0]})
    if isinstance(body, bytes) or callable(body):
        content = body() if callable(body) else body
        return api.client.post(
            "/v1/jobs", content=content, headers={**headers, "Content-Type": "application/json"}
        )
    return api.client.post("/v1/jobs", json=body, headers=headers)


@pytest.mark.parametrize("case", JOB_CASES, ids=[case.name for case in JOB_CASES])
def test_bad_job_request_is_refused(small_api: Api, case: JobCase) -> None:
    ds = dataset_id(small_api)
    before = _files(small_api.storage_root)
    response = _send_job(small_api, case, ds)
    assert response.status_code == case.status, response.text
    detail = response.json()["detail"]
    for fragment in case.expect:
        assert fragment.lower() in detail.lower(), (fragment, detail)
    if case.where is not None:
        assert response.json()["field"] == case.where, response.json()
    with small_api.session() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.owner == small_api.owner)) == 0
        assert (
            session.scalar(
                select(func.count())
                .select_from(IdempotencyKey)
                .where(IdempotencyKey.owner == small_api.owner)
            )
            == 0
        )
    assert small_api.enqueued == []
    assert _files(small_api.storage_root) == before


def test_a_good_request_still_passes_the_limits(small_api: Api) -> None:
    """The limits refuse what is too big, not what is normal."""
    ds = dataset_id(small_api)
    response = small_api.client.post(
        "/v1/jobs",
        json={
            "dataset_id": ds,
            "architecture": {"hidden": [64, 32]},
            "pruning": {"sparsities": [0.5]},
            "time_limit_s": 60,
        },
    )
    assert response.status_code == 202, response.text
    assert small_api.enqueued == [response.json()["id"]]


def test_memory_refusal_reports_estimate_and_limit(small_api: Api) -> None:
    ds = dataset_id(small_api)
    response = small_api.client.post(
        "/v1/jobs", json={"dataset_id": ds, "architecture": {"hidden": [2048, 2048], "reduction_factor": 1}}
    )
    body = response.json()
    assert response.status_code == 422
    assert body["limit_bytes"] == 64 * 1024**2 and body["estimated_bytes"] > body["limit_bytes"]
    assert math.isclose(
        float(body["detail"].split("estimated ")[1].split(" GiB")[0]),
        body["estimated_bytes"] / 1024**3,
        abs_tol=0.01,
    )


def test_chunked_bodies_are_cut_off_over_a_real_socket(server: tuple[Api, str]) -> None:
    """Through uvicorn (not the test transport): a chunked JSON body without Content-Length is refused
    with 413 once it passes GLAI_MAX_REQUEST_BYTES, and so is a chunked upload past its own limit."""
    import httpx

    api, url = server
    limit = api.services.settings.max_request_bytes

    def endless_json() -> Iterator[bytes]:
        yield b'{"dataset_id": "'
        for _ in range(limit // 65536 + 4):
            yield b"a" * 65536
        yield b'"}'

    def endless_upload() -> Iterator[bytes]:
        yield b'--XyZb0undary\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        for _ in range(api.services.settings.max_upload_bytes // 65536 + 4):
            yield b"1,2,x\n" * 10_000

    with httpx.Client(base_url=url, headers=api.headers, timeout=30) as client:
        response = client.post(
            "/v1/jobs", content=endless_json(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413 and "GLAI_MAX_REQUEST_BYTES" in response.json()["detail"]
        assert response.request.headers.get("transfer-encoding") == "chunked"
        response = client.post("/v1/datasets", content=endless_upload(), headers=MULTIPART)
        assert response.status_code == 413 and response.json()["field"] == "file"
    assert_nothing_stored(api, [])
