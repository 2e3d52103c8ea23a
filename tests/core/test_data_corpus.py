"""A corpus of bad data files, each built here, each refused with a DataError that names the problem.

Every case writes a real file (npz / csv / parquet bytes on disk) and goes through ``load_file`` as an
upload would. The expected fragments are what a user needs to fix the file: the problem, and the column,
array or line where it sits.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glai_core.data import DataError, load_file


@dataclass
class Case:
    name: str
    file_format: str
    build: Callable[[Path], None]
    expect: list[str]  # case-insensitive fragments of the message
    label_column: str | None = "label"
    where: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def _xy(n: int = 20, d: int = 4, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % classes


def _npz(**arrays: Any) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _text(content: str | bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)

    return build


def _parquet(table: pa.Table) -> Callable[[Path], None]:
    return lambda path: pq.write_table(table, path)


def _with_nan(x: np.ndarray, *cells: tuple[int, int], value: float = np.nan) -> np.ndarray:
    x = x.copy()
    for cell in cells:
        x[cell] = value
    return x


def _object_x(path: Path) -> None:
    ragged = np.empty(3, dtype=object)
    ragged[:] = [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]]
    np.savez(path, X=ragged, y=np.array([0, 1, 0]))


def _object_y(path: Path) -> None:
    x, _ = _xy(4)
    np.savez(path, X=x, y=np.array(["a", 1, None, "b"], dtype=object))


def _zip_bomb(path: Path) -> None:
    """16 MB of zeros that compress to a few kB; loaded with a 1 MB limit."""
    np.savez_compressed(path, X=np.zeros((4096, 512), dtype=np.float64), y=np.arange(4096) % 2)


def _patch_declared_sizes(path: Path, size: int) -> None:
    """Rewrite the uncompressed size of every member in the zip's central directory."""
    raw = bytearray(path.read_bytes())
    start = 0
    while (start := raw.find(b"PK\x01\x02", start)) >= 0:
        struct.pack_into("<I", raw, start + 24, size)
        start += 4
    path.write_bytes(bytes(raw))


def _lying_zip_bomb(path: Path) -> None:
    """Members whose central directory declares ~4.3 GB each: refused before reading anything."""
    x, y = _xy()
    np.savez(path, X=x, y=y)
    _patch_declared_sizes(path, 0xFFFFFFFE)


def _understated_sizes(path: Path) -> None:
    """Declared sizes smaller than the arrays' headers claim: an inconsistent (tampered) archive."""
    x, y = _xy(2000, 8)
    np.savez_compressed(path, X=x, y=y)
    _patch_declared_sizes(path, 200)


def _huge_shape_header(path: Path) -> None:
    """A tiny X.npy whose header claims 10^9 x 100 float64 (800 GB): must not be allocated."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**9, 100)}
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\0" * 64)
    y = io.BytesIO()
    np.save(y, np.arange(10) % 2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", member.getvalue())
        archive.writestr("y.npy", y.getvalue())


def _truncated_npz(path: Path) -> None:
    x, y = _xy(500, 20)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=x, y=y)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _corrupted_member(path: Path) -> None:
    """Valid zip directory, damaged deflate stream inside X.npy."""
    x, y = _xy(2000, 16)
    np.savez_compressed(path, X=x, y=y)
    raw = bytearray(path.read_bytes())
    for offset in range(400, 2400):
        raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))


def _plain_npy(path: Path) -> None:
    x, _ = _xy()
    with open(path, "wb") as handle:
        np.save(handle, x)


def _pickle_as_npz(path: Path) -> None:
    x, y = _xy()
    path.write_bytes(pickle.dumps({"X": x, "y": y}))


def _truncated_parquet(path: Path) -> None:
    x, y = _xy(200, 5)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(5)}, "label": y})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path.write_bytes(buffer.getvalue()[:-100])


def _csv(rows: list[str]) -> Callable[[Path], None]:
    return _text("\n".join(rows) + "\n")


X20, Y20 = _xy()
GOOD_ROWS = [f"{i % 7},{i * 0.5},{'cat' if i % 2 else 'dog'}" for i in range(20)]

CASES = [
    # ---- npz
    Case("npz-nan", "npz", _npz(X=_with_nan(X20, (3, 1)), y=Y20), ["1 nan value", "x[3, 1]"], where="X"),
    Case(
        "npz-inf", "npz", _npz(X=_with_nan(X20, (5, 2), value=np.inf), y=Y20), ["1 infinite value", "x[5, 2]"]
    ),
    Case(
        "npz-nan-and-inf",
        "npz",
        _npz(X=_with_nan(_with_nan(X20, (1, 0), (2, 0)), (7, 3), value=-np.inf), y=Y20),
        ["2 nan values and 1 infinite value", "x[1, 0]"],
    ),
    Case(
        "npz-float32-overflow",
        "npz",
        _npz(X=_with_nan(X20.astype(np.float64), (4, 0), value=1e300), y=Y20),
        ["infinite", "float32 range"],
    ),
    Case(
        "npz-nan-in-validation",
        "npz",
        _npz(X=X20, y=Y20, X_val=_with_nan(X20[:5], (2, 2)), y_val=Y20[:5]),
        ["x_val", "nan"],
        where="X_val",
    ),
    Case("npz-1d-features", "npz", _npz(X=np.arange(20.0), y=Y20), ["2-d", "(20,)"], where="X"),
    Case("npz-zero-features", "npz", _npz(X=np.zeros((20, 0)), y=Y20), ["no features"], where="X"),
    Case("npz-no-samples", "npz", _npz(X=np.zeros((0, 4)), y=np.zeros(0, dtype=int)), ["no samples"]),
    Case("npz-length-mismatch", "npz", _npz(X=X20, y=Y20[:19]), ["20 rows", "19 labels"], where="y"),
    Case("npz-one-class", "npz", _npz(X=X20, y=np.zeros(20, dtype=int)), ["only one class"], where="y"),
    Case(
        "npz-more-classes-than-samples",
        "npz",
        _npz(X=X20, y=np.arange(20)),
        ["20 distinct classes", "20 samples"],
    ),
    Case("npz-missing-y", "npz", _npz(X=X20), ["missing y", "found: x"], where="y"),
    Case("npz-wrong-names", "npz", _npz(features=X20, labels=Y20), ["'x' and 'y'", "features, labels"]),
    Case(
        "npz-object-features",
        "npz",
        _object_x,
        ["python objects", "pickled content is never loaded"],
        where="X",
    ),
    Case("npz-object-labels", "npz", _object_y, ["'y'", "python objects"], where="y"),
    Case(
        "npz-string-features",
        "npz",
        _npz(X=np.array([["a", "b"]] * 20), y=Y20),
        ["must be numeric"],
        where="X",
    ),
    Case("npz-one-hot-labels", "npz", _npz(X=X20, y=np.eye(2)[Y20]), ["1-d", "one-hot"], where="y"),
    Case("npz-regression-target", "npz", _npz(X=X20, y=np.linspace(0, 1, 20)), ["non-integer", "regression"]),
    Case("npz-nan-label", "npz", _npz(X=X20, y=_with_nan(Y20.astype(float), (4,))), ["nan", "index 4"]),
    Case(
        "npz-val-width-mismatch",
        "npz",
        _npz(X=X20, y=Y20, X_val=X20[:5, :3], y_val=Y20[:5]),
        ["x_val has 3 features", "x has 4"],
        where="X_val",
    ),
    Case(
        "npz-val-unseen-label",
        "npz",
        _npz(X=X20, y=Y20, X_val=X20[:3], y_val=np.array([0, 1, 7])),
        ["never seen in training", "'7'"],
        where="y_val",
    ),
    Case(
        "npz-val-without-labels",
        "npz",
        _npz(X=X20, y=Y20, X_val=X20[:3]),
        ["y_val is missing"],
        where="y_val",
    ),
    Case(
        "npz-val-length-mismatch",
        "npz",
        _npz(X=X20, y=Y20, X_val=X20[:3], y_val=Y20[:2]),
        ["x_val has 3 rows", "2 labels"],
    ),
    Case("npz-zip-bomb", "npz", _zip_bomb, ["zip bomb", "limit"], kwargs={"max_bytes": 1_000_000}),
    Case("npz-lying-zip-bomb", "npz", _lying_zip_bomb, ["zip bomb", "8.59 GB", "4.29 GB"]),
    Case("npz-understated-sizes", "npz", _understated_sizes, ["corrupted"]),
    Case("npz-huge-shape-header", "npz", _huge_shape_header, ["claims shape", "1000000000"]),
    Case("npz-truncated", "npz", _truncated_npz, ["not a valid .npz", "truncated"]),
    Case("npz-corrupted-member", "npz", _corrupted_member, ["corrupted"]),
    Case("npz-garbage", "npz", _text(bytes(range(256)) * 8), ["not a valid .npz"]),
    Case("npz-plain-npy", "npz", _plain_npy, ["not a valid .npz"]),
    Case("npz-pickle", "npz", _pickle_as_npz, ["not a valid .npz"]),
    Case("npz-empty-file", "npz", _text(b""), ["empty"]),
    # ---- csv
    Case(
        "csv-ragged-long-row",
        "csv",
        _csv(["a,b,label", *GOOD_ROWS[:5], "1,2,cat,9", *GOOD_ROWS[5:]]),
        ["ragged", "line 7", "4 fields", "header has 3"],
    ),
    Case(
        "csv-ragged-short-row",
        "csv",
        _csv(["a,b,label", *GOOD_ROWS, "1,dog"]),
        ["ragged", "line 22", "2 fields"],
    ),
    Case(
        "csv-wrong-label-column",
        "csv",
        _csv(["a,b,label", *GOOD_ROWS]),
        ["'target' not found", "'a', 'b', 'label'"],
        label_column="target",
        where="label_column",
    ),
    Case(
        "csv-no-label-column-given",
        "csv",
        _csv(["a,b,kind", *GOOD_ROWS]),
        ["choose the label column", "'kind'"],
        label_column=None,
    ),
    Case("csv-semicolons", "csv", _csv(["a;b;label", "1;2;x", "3;4;y"]), ["not found", "';'"]),
    Case(
        "csv-one-class",
        "csv",
        _csv(["a,b,label"] + [f"{i},{i},same" for i in range(10)]),
        ["only one class"],
        where="label",
    ),
    Case(
        "csv-id-as-label",
        "csv",
        _csv(["id,a,b"] + [f"row{i},{i},{i * 2}" for i in range(12)]),
        ["12 distinct classes for 12 samples", "not an id"],
        label_column="id",
    ),
    Case("csv-only-label", "csv", _csv(["label", "a", "b", "a"]), ["only the label column", "feature"]),
    Case(
        "csv-string-feature",
        "csv",
        _csv(["a,colour,label"] + [f"{i},{'red' if i == 4 else i},x{i % 2}" for i in range(10)]),
        ["'colour' is not numeric", "'red'", "line 6"],
        where="colour",
    ),
    Case(
        "csv-missing-value",
        "csv",
        _csv(["a,b,label", "1,2,x", "3,,y", "4,5,x", "6,7,y"]),
        ["column 'b'", "1 missing value", "line 3"],
        where="b",
    ),
    Case(
        "csv-missing-label",
        "csv",
        _csv(["a,b,label", "1,2,x", "3,4,", "4,5,x", "6,7,y"]),
        ["column 'label'", "missing"],
    ),
    Case(
        "csv-infinite",
        "csv",
        _csv(["a,b,label", "1,2,x", "3,inf,y", "4,5,x", "6,7,y"]),
        ["1 infinite value", "line 3", "column 'b'"],
    ),
    Case(
        "csv-overflow",
        "csv",
        _csv(["a,b,label", "1,2,x", "3,1e39,y", "4,5,x", "6,7,y"]),
        ["infinite", "line 3"],
    ),
    Case(
        "csv-non-utf8-label",
        "csv",
        _text("a,b,label\n1,2,caf\xe9\n3,4,tea\n5,6,tea\n".encode("latin-1")),
        ["not utf-8", "label", "line 2"],
    ),
    Case(
        "csv-non-utf8-feature",
        "csv",
        _text(b"a,b,label\n1,2,x\n3,4\xff,y\n5,6,x\n"),
        ["not utf-8", "'b'", "line 3"],
    ),
    Case(
        "csv-non-utf8-header",
        "csv",
        _text("a,b\xe9,label\n1,2,x\n3,4,y\n".encode("latin-1")),
        ["header", "not utf-8"],
    ),
    Case("csv-utf16", "csv", _text("a,b,label\n1,2,x\n3,4,y\n".encode("utf-16")), ["utf-8"]),
    Case("csv-empty-file", "csv", _text(b""), ["empty"], where="file"),
    Case("csv-header-only", "csv", _csv(["a,b,label"]), ["no data rows"]),
    Case("csv-whitespace-only", "csv", _text("\n\n\n"), ["empty"]),
    Case(
        "csv-duplicate-columns", "csv", _csv(["a,a,label", "1,2,x", "3,4,y", "5,6,x"]), ["duplicate", "'a'"]
    ),
    Case(
        "csv-continuous-label",
        "csv",
        _csv(["a,label"] + [f"{i},{i * 0.37:.2f}" for i in range(10)]),
        ["non-integer", "regression"],
    ),
    # ---- parquet
    Case("parquet-truncated", "parquet", _truncated_parquet, ["not a valid parquet", "truncated"]),
    Case("parquet-garbage", "parquet", _text(b"PAR1" + bytes(range(200)) + b"PAR1"), ["not a valid parquet"]),
    Case("parquet-csv-bytes", "parquet", _csv(["a,b,label", *GOOD_ROWS]), ["not a valid parquet"]),
    Case(
        "parquet-string-feature",
        "parquet",
        _parquet(pa.table({"a": [1.0, 2.0, 3.0], "b": ["x", "1", "2"], "label": [0, 1, 0]})),
        ["'b' is not numeric", "'x'", "row 1"],
    ),
    Case(
        "parquet-null-feature",
        "parquet",
        _parquet(pa.table({"a": [1.0, None, 3.0, 4.0], "label": ["p", "q", "p", "q"]})),
        ["column 'a'", "1 missing value", "row 2"],
    ),
    Case(
        "parquet-nan-feature",
        "parquet",
        _parquet(pa.table({"a": [1.0, 2.0, float("nan"), 4.0], "label": ["p", "q", "p", "q"]})),
        ["1 nan value", "row 3", "column 'a'"],
    ),
    Case(
        "parquet-list-feature",
        "parquet",
        _parquet(pa.table({"a": [[1.0], [2.0], [3.0]], "label": [0, 1, 0]})),
        ["'a' is not numeric", "list"],
    ),
    Case(
        "parquet-missing-label",
        "parquet",
        _parquet(pa.table({"a": [1.0, 2.0, 3.0], "b": [0, 1, 0]})),
        ["'label' not found", "'a', 'b'"],
    ),
    Case(
        "parquet-no-rows",
        "parquet",
        _parquet(pa.table({"a": pa.array([], pa.float64()), "label": pa.array([], pa.int64())})),
        ["no data rows"],
    ),
    Case(
        "parquet-one-class",
        "parquet",
        _parquet(pa.table({"a": [1.0, 2.0, 3.0], "label": ["z", "z", "z"]})),
        ["only one class", "'z'"],
    ),
    # ---- general
    Case(
        "unknown-format",
        "xlsx",
        _csv(["a,b,label", *GOOD_ROWS]),
        ["unknown file format", "npz, csv, parquet"],
        where="format",
    ),
]


def test_corpus_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_file_is_refused_with_a_clear_message(case: Case, tmp_path: Path) -> None:
    path = tmp_path / f"upload.{case.file_format}"
    case.build(path)
    with pytest.raises(DataError) as caught:
        load_file(path, case.file_format, case.label_column, **case.kwargs)
    message = str(caught.value).lower()
    for fragment in case.expect:
        assert fragment.lower() in message, f"{fragment!r} not in {message!r}"
    if case.where is not None:
        assert caught.value.field == case.where


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_file(tmp_path / "nope.csv", "csv", "label")
