"""``canonicalize_file`` streams csv and parquet uploads: the canonical files must be byte for byte those of
``save_canonical(load_file(...))``, every refusal the same message and field, with small batches forced so
that problems sit in a later batch than the first, and host memory must not grow with the file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from glai_core import data as gdata
from glai_core import tables
from glai_core.data import DataError, canonicalize_file, load_canonical, load_file, save_canonical
from tests.core.test_data_corpus import CASES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """7-row pieces, 64-byte CSV blocks (a few rows each), every parquet row group read column by column."""
    monkeypatch.setattr(tables, "TABLE_BATCH_ROWS", 7)
    monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 64)
    monkeypatch.setattr(tables, "PARQUET_GROUP_BYTES", 0)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _outcome(load: Callable[..., object], *args: object, **kwargs: object) -> tuple[str, str | None]:
    """The message and field of the ``DataError`` that ``load(*args, **kwargs)`` raises."""
    with pytest.raises(DataError) as caught:
        load(*args, **kwargs)
    return str(caught.value), caught.value.field


def _assert_same_as_in_memory(path: Path, file_format: str, label: str | None, tmp_path: Path) -> None:
    """Both paths refuse the file with the same message and field, or write identical directories."""
    try:
        reference = load_file(path, file_format, label)
    except DataError as exc:
        streamed = _outcome(canonicalize_file, path, file_format, tmp_path / "streamed", label)
        assert streamed == (str(exc), exc.field)
        return
    save_canonical(tmp_path / "plain", reference)
    streamed = canonicalize_file(path, file_format, tmp_path / "streamed", label)
    assert _files(tmp_path / "streamed") == _files(tmp_path / "plain")
    assert isinstance(streamed.x, np.memmap) and streamed.class_names == reference.class_names
    np.testing.assert_array_equal(streamed.x, reference.x)
    np.testing.assert_array_equal(streamed.y, reference.y)
    assert np.load(tmp_path / "streamed" / "X.npy", mmap_mode="r").shape == reference.x.shape


# --------------------------------------------------------------------------------------------- files

def _rows(count: int, row: Callable[[int], str]) -> str:
    return "".join(row(i) + "\n" for i in range(count))


CSV_FILES: dict[str, tuple[str | bytes, str | None]] = {
    "numeric-labels": ("a,b,label\n" + _rows(60, lambda i: f"{i * 0.25},{(i * 7) % 11},{i % 3}"), None),
    "text-labels": ("a,b,label\n" + _rows(60, lambda i: f"{i * 0.5},{-i},{'cat' if i % 3 else 'dog'}"), None),
    "label-in-the-middle": ("x,species,flag,z\n"
                            + _rows(60, lambda i: f"{i},{'setosa' if i % 2 else 'virginica'},"
                                                  f"{'true' if i % 3 else 'false'},{i / 7:.4f}"),
                            "species"),
    "bool-labels": ("a,label\n" + _rows(60, lambda i: f"{i},{'true' if i % 2 else 'false'}"), None),
    "whole-float-labels": ("a,label\n" + _rows(60, lambda i: f"{i},{i % 4}.0"), None),
    "bom-and-crlf": ("\ufeffa,b,label\r\n" + "".join(f"{i},{i % 5},{i % 2}\r\n" for i in range(60)), None),
    # the first blocks look like integers: read_csv loosens the type later, the streamed pass reads again
    "int-then-float": ("a,b,label\n" + _rows(60, lambda i: f"{i},{i % 3},{i % 2}") + "2.5,1,0\n", None),
    "sparse-int-then-float": ("a,b,c,label\n" + _rows(60, lambda i: f"0,0,0,{i % 2}") + "0.5,0.25,1.5,1\n",
                              None),
    "label-int-then-text": ("a,b,label\n" + _rows(60, lambda i: f"{i},{i},{i % 2}") + "1,1,cat\n", None),
    "label-01-then-word": ("a,b,label\n" + _rows(60, lambda i: f"{i},{i},{i % 2}") + "1,1,true\n", None),
    "zero-one-then-word": ("a,b,label\n" + _rows(60, lambda i: f"{i % 2},{i},{i % 2}") + "true,1,0\n", None),
    # no block's own type takes every value (empty cells keep the two kinds of value in separate blocks):
    # read_csv's inference of the column decides
    "hex-then-float": ("a,b,label\n" + _rows(60, lambda i: f"0x1{i % 9},{i},{i % 2}") + "NA,1,0\n" * 15
                       + "1.5,1,0\n" * 20, None),
    "label-int-then-word": ("a,b,label\n" + _rows(60, lambda i: f"{i},{i},{5 + i % 2}") + "1,1,\n" * 15
                            + "1,1,true\n" * 20, None),
    # a row longer than the streamed block, and a quoted line break across blocks: read_csv's blocks decide
    "long-row": ("a,b,label\n" + _rows(30, lambda i: f"{i},{i},{i % 2}") + f"1,{'0' * 300}7,0\n"
                 + _rows(30, lambda i: f"{i},{i},{i % 2}"), None),
    "quoted-line-break": ("a,label\n" + _rows(30, lambda i: f'{i},"c {i % 2}"') + '5,"c\n1"\n'
                          + _rows(30, lambda i: f'{i},"c {i % 2}"'), None),
}


def _parquet_tables() -> dict[str, tuple[pa.Table, str | None, int | None]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3))
    frame = pd.DataFrame({"p0": x[:, 0], "digit": pd.Categorical([f"d{i % 4}" for i in range(90)]),
                          "p1": np.arange(90, dtype=np.uint8)})
    return {
        "numeric-labels": (pa.table({"a": x[:, 0], "b": x[:, 1].astype(np.float32), "c": np.arange(90),
                                     "d": np.arange(90) % 3 == 0, "label": np.arange(90) % 3}), None, None),
        "text-labels-row-groups": (pa.table({"a": x[:, 0], "label": [f"k{i % 4}" for i in range(90)]}), None,
                                   20),
        "categorical-label-column": (pa.Table.from_pandas(frame), "digit", 13),
        "pandas-index-column": (pa.Table.from_pandas(pd.DataFrame({"a": x[:, 2], "label": np.arange(90) % 2},
                                                                  index=np.arange(90) * 3)), None, None),
        "int32-labels": (pa.table({"a": x[:, 0], "label": (np.arange(90) % 2).astype(np.int32)}), None, 31),
    }


@pytest.mark.parametrize("small", [False, True], ids=["default-batches", "small-batches"])
@pytest.mark.parametrize("name", list(CSV_FILES))
def test_streamed_csv_equals_in_memory(name: str, small: bool, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if small:
        monkeypatch.setattr(tables, "TABLE_BATCH_ROWS", 7)
        monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 64)
    content, label = CSV_FILES[name]
    path = tmp_path / "upload.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    _assert_same_as_in_memory(path, "csv", label, tmp_path)


@pytest.mark.parametrize("small", [False, True], ids=["default-batches", "small-batches"])
@pytest.mark.parametrize("name", list(_parquet_tables()))
def test_streamed_parquet_equals_in_memory(name: str, small: bool, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if small:  # 7-row pieces of whole row groups, and row groups read column by column
        monkeypatch.setattr(tables, "TABLE_BATCH_ROWS", 7)
    table, label, row_group_size = _parquet_tables()[name]
    path = tmp_path / "upload.parquet"
    pq.write_table(table, path, row_group_size=row_group_size)
    _assert_same_as_in_memory(path, "parquet", label, tmp_path)
    if small:
        monkeypatch.setattr(tables, "PARQUET_GROUP_BYTES", 0)
        _assert_same_as_in_memory(path, "parquet", label, tmp_path / "by-columns")
        assert not list((tmp_path / "by-columns" / "streamed").glob("*.part"))  # the scratch file is gone


def test_csv_and_parquet_of_one_table_stream_to_the_same_files(tmp_path: Path, small_batches: None) -> None:
    x = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(6)}, "label": [f"c{i % 3}" for i in range(50)]})
    pacsv.write_csv(table, tmp_path / "d.csv")
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=16)
    canonicalize_file(tmp_path / "d.csv", "csv", tmp_path / "from-csv")
    canonicalize_file(tmp_path / "d.parquet", "parquet", tmp_path / "from-parquet")
    assert _files(tmp_path / "from-csv") == _files(tmp_path / "from-parquet")
    np.testing.assert_array_equal(load_canonical(tmp_path / "from-csv").x, x)


def test_npy_header_that_cannot_grow_in_place_is_rewritten(tmp_path: Path) -> None:
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    target = tmp_path / "X.npy"
    with open(target, "wb") as out:
        out.write(b"\0" * 256)  # a placeholder longer than the real header
        rows.tofile(out)
    tables._finish_npy(target, 256, (4, 3))
    np.testing.assert_array_equal(np.load(target, mmap_mode="r"), rows)
    assert not list(tmp_path.glob("*.part"))


# ------------------------------------------------------------------------------ refusals in a later batch

def _csv_with(line: int, row: str, count: int = 60) -> str:
    """A good 3-column CSV (a, b, label) with ``row`` as physical line ``line`` (the header is line 1)."""
    rows = [f"{i},{i * 0.5},{'x' if i % 2 else 'y'}" for i in range(count)]
    rows[line - 2] = row
    return "a,b,label\n" + "\n".join(rows) + "\n"


LATE_CSV = [
    ("missing-value", _csv_with(25, "3,,x"), ["column 'b'", "1 missing value", "first at line 25"]),
    ("infinite-value", _csv_with(25, "3,inf,x"), ["1 infinite value", "first at line 25, column 'b'"]),
    ("overflow-and-inf", _csv_with(25, "3,1e39,x").replace("\n40,", "\n-inf,", 1),
     ["2 infinite values", "first at line 25, column 'b'"]),
    ("non-numeric", _csv_with(40, "7,red,x"), ["feature column 'b' is not numeric", "'red' at line 40"]),
    ("empty-label", _csv_with(50, "7,1.5, "), ["column 'label' has 1 missing (empty) label", "line 50"]),
    ("missing-label", _csv_with(50, "7,1.5,"), ["column 'label' has 1 missing", "line 50"]),
    ("ragged", _csv_with(44, "7,1.5"), ["ragged CSV", "line 44 has 2 fields"]),
    ("ragged-after-a-bad-label-column", _csv_with(44, "7,1.5").replace("a,b,label", "a,b,kind"),
     ["ragged CSV", "line 44"]),
    ("non-utf8-label", _csv_with(33, "1,2,caf\xe9").encode("latin-1"), ["not UTF-8", "first at line 33"]),
    ("counts-cover-the-whole-file", _csv_with(20, "3,,x").replace("\n45,", "\n,", 1),
     ["column 'a' has 1 missing value", "first at line 47"]),
]


@pytest.mark.parametrize(("name", "content", "expect"), LATE_CSV, ids=[case[0] for case in LATE_CSV])
def test_csv_problem_in_a_later_batch_names_its_line(name: str, content: str | bytes, expect: list[str],
                                                     tmp_path: Path, small_batches: None) -> None:
    path = tmp_path / "upload.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    message, field = _outcome(canonicalize_file, path, "csv", tmp_path / "out", "label")
    assert all(fragment in message for fragment in expect), message
    assert (message, field) == _outcome(load_file, path, "csv", "label")


def _late(values: np.ndarray, row: int, value: float) -> np.ndarray:
    values = values.astype(np.float64)
    values[row] = value
    return values


LATE_PARQUET = [
    ("nan", {"a": _late(np.arange(60), 24, np.nan), "label": np.arange(60) % 2}, ["1 NaN value", "row 25"]),
    ("null", {"a": pa.array([*range(44), None, *range(45, 60)], pa.float64()), "label": np.arange(60) % 2},
     ["column 'a' has 1 missing value", "row 45"]),
    ("nan-label", {"a": np.arange(60.0), "label": _late(np.arange(60) % 2, 52, np.nan)},
     ["1 missing (NaN) or infinite label", "index 52"]),
    ("text-feature", {"a": [str(i) for i in range(39)] + ["red"] + [str(i) for i in range(20)],
                      "label": np.arange(60) % 2}, ["'red' at row 40"]),
]


@pytest.mark.parametrize(("name", "columns", "expect"), LATE_PARQUET, ids=[case[0] for case in LATE_PARQUET])
@pytest.mark.parametrize("by_columns", [False, True], ids=["row-groups", "by-columns"])
def test_parquet_problem_in_a_later_batch_names_its_row(name: str, columns: dict[str, object],
                                                        expect: list[str], by_columns: bool, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "TABLE_BATCH_ROWS", 7)
    monkeypatch.setattr(tables, "PARQUET_GROUP_BYTES", 0 if by_columns else 1 << 30)
    path = tmp_path / "upload.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=16)
    message, field = _outcome(canonicalize_file, path, "parquet", tmp_path / "out", "label")
    assert all(fragment in message for fragment in expect), message
    assert (message, field) == _outcome(load_file, path, "parquet", "label")


@pytest.mark.parametrize("small", [False, True], ids=["default-batches", "small-batches"])
def test_every_bad_file_of_the_corpus_gets_the_in_memory_refusal(small: bool, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if small:
        monkeypatch.setattr(tables, "TABLE_BATCH_ROWS", 3)
        monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 48)
        monkeypatch.setattr(tables, "PARQUET_GROUP_BYTES", 0)
        monkeypatch.setattr(gdata, "STREAM_BLOCK_BYTES", 512)
    for case in CASES:
        path = tmp_path / case.name / f"upload.{case.file_format}"
        path.parent.mkdir()
        case.build(path)
        expected = _outcome(load_file, path, case.file_format, case.label_column, **case.kwargs)
        streamed = _outcome(canonicalize_file, path, case.file_format, path.parent / "out", case.label_column,
                            **case.kwargs)
        assert streamed == expected, case.name


# ------------------------------------------------------------------------------------------- memory

_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    # Fixed costs, not data: Array.to_numpy imports pandas (~50 MB) on first use, on either path.
    import pandas, pyarrow.csv, pyarrow.parquet, pyarrow.compute  # noqa: F401
    from glai_core import data

    def status(key):  # kB
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(key + ":"))

    mode, path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    # Peak RSS from here on: the imports' own peak (torch) can lie above the whole run, so ru_maxrss,
    # which cannot be reset, would read no growth at all. Writing 5 to clear_refs resets VmHWM.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = status("VmRSS")
    if mode == "streamed":
        loaded = data.canonicalize_file(path, "csv", out, "label")
    else:  # the in-memory path canonicalize_file took before (run by hand for comparison)
        loaded = data.load_file(path, "csv", "label")
        data.save_canonical(out, loaded)
    print(json.dumps({"growth": (status("VmHWM") - before) * 1024, "shape": list(loaded.x.shape),
                      "classes": loaded.class_names}))
""")


def _measure(mode: str, path: Path, out: Path) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path), str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (VmHWM reset)")
def test_streamed_csv_peak_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """A 175 MB CSV (240,000 x 100 numbers). Measured here: the child's peak RSS grows by ~55 MB streamed
    (0.31x: blocks, a batch, the labels), by 700-720 MB (4.1x) on the in-memory path that
    canonicalize_file took before (``_measure("in-memory", ...)``: load_file + save_canonical)."""
    rng = np.random.default_rng(0)
    block = pa.table({**{f"f{i}": rng.integers(-99999, 99999, 20_000) / 1000 for i in range(100)},
                      "label": rng.integers(0, 10, 20_000)})
    header, body = pa.BufferOutputStream(), pa.BufferOutputStream()
    pacsv.write_csv(block.slice(0, 0), header)
    pacsv.write_csv(block, body, pacsv.WriteOptions(include_header=False))
    path = tmp_path / "big.csv"
    with open(path, "wb") as out:
        out.write(header.getvalue().to_pybytes())
        for _ in range(12):
            out.write(body.getvalue().to_pybytes())
    size = path.stat().st_size
    assert 140e6 < size < 200e6
    measured = _measure("streamed", path, tmp_path / "canonical")
    assert measured["shape"] == [240_000, 100] and measured["classes"] == [str(i) for i in range(10)]
    assert measured["growth"] < 0.5 * size, f"peak RSS grew by {measured['growth'] / 1e6:.0f} MB"
