"""Wide csv/parquet tables: the layout check is linear in the columns, the column limit is checked on the
header before any row is read, and a wide CSV (read in blocks sized to its rows) gives the same canonical
files as the in-memory reader."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glai_core import tables
from glai_core.data import DataError, LimitError, canonicalize_file, load_file, save_canonical


def _csv(path: Path, columns: int, rows: int, quoted: bool = False) -> Path:
    names = [f'"c{i}"' if quoted else f"c{i}" for i in range(columns - 1)] + ["label"]
    lines = [",".join(names)] + [",".join(str((r * 7 + i) % 10) for i in range(columns - 1)) + f",{r % 2}"
                                 for r in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_layout_check_is_linear_in_the_columns() -> None:
    """list.count per name made 100,000 columns take minutes (10^10 comparisons); a count is linear."""
    names = [f"c{i}" for i in range(300_000)] + ["label"]
    started = time.perf_counter()
    label, features = tables._table_layout(names, True, None)
    assert time.perf_counter() - started < 5
    assert label == "label" and len(features) == 300_000
    with pytest.raises(DataError, match="duplicate column names: 'c7'"):
        tables._table_layout(names + ["c7"], True, None)


@pytest.mark.parametrize("quoted", [False, True], ids=["plain-header", "quoted-header"])
def test_a_csv_wider_than_the_limit_is_refused_from_its_header(tmp_path: Path, quoted: bool) -> None:
    path = _csv(tmp_path / "wide.csv", 9, 3, quoted)
    with pytest.raises(LimitError) as caught:
        canonicalize_file(path, "csv", tmp_path / "out", max_columns=8)
    assert caught.value.limit == "columns" and caught.value.field == "file"
    assert "9 columns, above the limit of 8" in caught.value.message
    assert canonicalize_file(path, "csv", tmp_path / "ok", max_columns=9).x.shape == (3, 8)


def test_a_parquet_wider_than_the_limit_is_refused(tmp_path: Path) -> None:
    table = pa.table({**{f"f{i}": np.arange(4.0) for i in range(9)}, "label": [0, 1, 0, 1]})
    pq.write_table(table, tmp_path / "wide.parquet")
    with pytest.raises(LimitError, match="10 columns, above the limit of 9"):
        canonicalize_file(tmp_path / "wide.parquet", "parquet", tmp_path / "out", max_columns=9)
    ok = canonicalize_file(tmp_path / "wide.parquet", "parquet", tmp_path / "ok", max_columns=10)
    assert ok.n_features == 9


def test_the_issue_table_is_refused_at_once(tmp_path: Path) -> None:
    """100,000 columns and 4 rows: 113 s and accepted before; now refused before pyarrow reads a block."""
    path = _csv(tmp_path / "issue.csv", 100_000, 4)
    started = time.perf_counter()
    with pytest.raises(LimitError):
        canonicalize_file(path, "csv", tmp_path / "out", max_columns=16_384)
    assert time.perf_counter() - started < 2


def test_a_wide_csv_in_row_sized_blocks_equals_the_in_memory_read(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 4096)  # several blocks, each a few (wide) rows
    monkeypatch.setattr(tables, "CSV_ROWS_PER_BLOCK", 3)
    path = _csv(tmp_path / "wide.csv", 1500, 40)
    assert len(tables._first_line(path)) > tables.CSV_WIDE_LINE_BYTES
    assert tables._csv_block_bytes(tables._first_line(path)) > tables.CSV_BLOCK_BYTES
    save_canonical(tmp_path / "plain", load_file(path, "csv"))
    canonicalize_file(path, "csv", tmp_path / "streamed")
    for name in ("X.npy", "y.npy", "meta.json"):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
