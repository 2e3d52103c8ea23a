"""CSV and Parquet uploads: reading, validation and streaming into the canonical arrays.

A csv/parquet upload can be larger than host memory allows to hold as a table, so ``canonicalize_file``
validates it batch by batch (csv blocks, parquet row groups, a large row group column by column) and
streams float32 rows straight into ``X.npy`` with bounded memory. The same column checks
(``_TableScan``) serve the in-memory path of ``load_file``, so both give a file the same result and the
same messages. Split from ``glai_core.data``, which imports this module lazily (it imports data).
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from glai_core import data as _data
from glai_core.data import (
    DataError,
    LimitError,
    LoadedData,
    _encode_labels,
    _finalize,
    _FiniteScan,
    _label_array,
    _plural,
    _save_rows,
    _write_meta,
    _write_npy_header,
    load_canonical,
)

TABLE_BATCH_ROWS = 65536  # csv/parquet rows are checked and converted in pieces of at most this many rows
TABLE_BATCH_BYTES = 2 * 1024**2  # and about this many bytes of (8-byte) values: fewer rows of a wide table
MIN_BATCH_ROWS = 64  # but never fewer: each batch costs a few Python calls per column, whatever its rows
CSV_BLOCK_BYTES = 256 * 1024  # the streaming CSV reader's block (it reads up to 32 blocks ahead)
CSV_WIDE_LINE_BYTES = 4096  # a header longer than this makes a wide table: its blocks grow with its rows
CSV_ROWS_PER_BLOCK = 64  # ... to hold about this many rows (pyarrow's work per block grows with columns)
CSV_MAX_BLOCK_BYTES = 8 * 1024**2
_READ_CSV_BLOCK_BYTES = 1 << 20  # read_csv's default block size
PARQUET_BUFFER_BYTES = 0  # parquet column chunks: 0 reads each whole (one column at a time when big)
PARQUET_GROUP_BYTES = 4 * 1024**2  # a bigger row group (8 bytes a value) is read column by column
PARQUET_TRANSPOSE_BYTES = 8 * 1024**2  # ... into a scratch file, then moved to X.npy in blocks of this size


def csv_line(row: int) -> str:
    return f"line {row + 2}"


def parquet_row(row: int) -> str:
    return f"row {row + 1}"


def _check_csv_encoding(path: Path) -> None:
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\0" in start:
        raise DataError("the CSV file is not UTF-8 text (it looks like UTF-16 or binary data); save it as "
                        "UTF-8", "file")


def _invalid_row_recorder() -> tuple[list[Any], Callable[[Any], str]]:
    """A pyarrow ``invalid_row_handler`` that remembers the first ragged row and lets the read fail."""
    first_bad: list[Any] = []

    def on_invalid_row(row: Any) -> str:
        first_bad.append(row)
        return "error"

    return first_bad, on_invalid_row


class _TypeChange(Exception):
    """A streamed CSV column holds a value that the type inferred from the first block cannot take.
    ``read_csv`` loosens the type and converts the earlier blocks again; a streaming reader stops."""

    def __init__(self, column: int) -> None:
        super().__init__(column)
        self.column = column


_CONVERSION_ERROR = re.compile(r"^In CSV column #(\d+): .*CSV conversion error to ")


class _CsvParseError(DataError):
    """A CSV parse failure seen by the streaming reader. It may depend on where blocks end (a row longer
    than a block, a quoted line break across blocks), so it is confirmed with read_csv's blocks."""


def _csv_error(exc: Exception, first_bad: list[Any], *, streaming: bool = False) -> Exception:
    """What a pyarrow CSV failure means for the uploader (when streaming: a ``_TypeChange``, or the
    message as a ``_CsvParseError``)."""
    error = _CsvParseError if streaming else DataError
    if isinstance(exc, UnicodeDecodeError):
        return error(f"the CSV file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                     "UTF-8", "file")
    if first_bad:
        row = first_bad[0]
        return error(f"ragged CSV: line {row.number} has {row.actual_columns} fields but the header "
                     f"has {row.expected_columns}: {row.text[:80]!r}", "file")
    conversion = _CONVERSION_ERROR.match(str(exc)) if streaming else None
    if conversion:
        return _TypeChange(int(conversion.group(1)))
    if "empty" in str(exc).lower():
        return error("the CSV file is empty", "file")
    return error(f"the CSV file could not be parsed: {exc}", "file")


def read_csv(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    _check_csv_encoding(path)
    first_bad, on_invalid_row = _invalid_row_recorder()
    try:
        return pacsv.read_csv(str(path), read_options=pacsv.ReadOptions(use_threads=False),
                              parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row))
    except (UnicodeDecodeError, pa.ArrowInvalid) as exc:
        raise _csv_error(exc, first_bad) from exc


def _parquet_error(exc: Exception, path: Path) -> DataError:
    detail = str(exc).replace(f"Could not open Parquet input source '{path}': ", "")
    detail = detail.replace(str(path), path.name)  # never echo server paths to the user
    return DataError(f"not a valid Parquet file (corrupted or truncated): {detail}", "file")


def read_parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(str(path))
    except (pa.ArrowException, OSError) as exc:
        raise _parquet_error(exc, path) from exc


def _first_invalid_utf8(column: Any) -> int:
    for index, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return index
    return -1


def _first_non_number(column: Any) -> int:
    """Index of the first text value that does not read as a number, -1 if none (error path only)."""
    for index, value in enumerate(column.to_pylist()):
        try:
            float(value)
        except (TypeError, ValueError):
            return index
    return -1


def _default_label_column(columns: list[str]) -> str:
    candidates = [c for c in ("label", "y", "target", "class") if c in columns]
    if len(candidates) == 1:
        return candidates[0]
    raise DataError(f"choose the label column: none given and no single obvious one (available columns: "
                    f"{', '.join(map(repr, columns))})", "label_column")


def _column_names(source: Any) -> list[str]:
    """A table's or a reader schema's column names."""
    import pyarrow as pa

    try:
        return list(source.names if isinstance(source, pa.Schema) else source.column_names)
    except UnicodeDecodeError as exc:
        raise DataError(f"the header row is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} in "
                        f"{bytes(exc.object)!r}); save the file as UTF-8", "file") from exc


def _table_layout(columns: list[str], has_rows: bool, label_column: str | None) -> tuple[str, list[str]]:
    """The label column and the feature columns of a table with these column names."""
    duplicates = sorted(name for name, count in Counter(columns).items() if count > 1)  # (list.count: n^2)
    if duplicates:
        raise DataError(f"duplicate column names: {', '.join(map(repr, duplicates))}", duplicates[0])
    if not has_rows:
        raise DataError(f"the file has a header ({len(columns)} columns) but no data rows", "file")
    label = label_column if label_column is not None else _default_label_column(columns)
    if label not in columns:
        hint = " (the file may use ';' or tabs instead of commas)" if len(columns) == 1 else ""
        raise DataError(f"label column {label!r} not found; available columns: "
                        f"{', '.join(map(repr, columns))}{hint}", "label_column")
    features = [c for c in columns if c != label]
    if not features:
        raise DataError(f"the file has only the label column {label!r}: at least one feature column is "
                        "needed", "features")
    return label, features


def _is_binary(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_binary(kind) or pa.types.is_large_binary(kind))


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _is_numeric(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind))


class _TableScan:
    """The checks of a csv/parquet table's columns, fed its rows in order: record batches when streaming,
    the whole table at once in memory. Per column, bytes that are not UTF-8, missing values, the type,
    empty labels and non-numeric text are counted or located over every row, and ``check`` raises the
    first problem in the in-memory order (label column, then features left to right), so a streamed file
    gets the message the whole table gets. Once a problem is seen nothing more is converted."""

    def __init__(self, label: str, features: list[str], row_label: Callable[[int], str]) -> None:
        self.label, self.features, self.row_label = label, features, row_label
        self.rows = 0
        self.refused = False
        self.kinds: dict[str, Any] = {}
        self.flags: dict[str, tuple[bool, bool, bool]] = {}  # binary, numeric, text
        self.bad_utf8: dict[str, int] = {}  # first row
        self.nulls: dict[str, tuple[int, int]] = {}  # count, first row
        self.empty_labels = (0, -1)  # count, first row
        self.non_number: dict[str, tuple[int, Any]] = {}  # first row whose text is not a number, the text
        self.first_text: dict[str, Any] = {}
        self.label_parts: list[np.ndarray] = []

    def add(self, batch: Any) -> np.ndarray | None:
        """Check one batch (rows ``self.rows`` onwards); its features as float32, None once refused."""
        position = {name: index for index, name in enumerate(batch.schema.names)}
        x = np.empty((batch.num_rows, len(self.features)), dtype=np.float32)
        with np.errstate(over="ignore"):  # overflow becomes inf, which the finite check reports
            for index, values in self.add_columns(batch.num_rows, lambda name: batch.column(position[name])):
                x[:, index] = values
        return None if self.refused else x

    def add_columns(self, count: int, column: Callable[[str], Any]) -> Iterator[tuple[int, np.ndarray]]:
        """Check the next ``count`` rows, read column by column (``column(name)``, label first); yields
        (feature index, values) to convert until the table is refused."""
        start = self.rows
        self.rows += count
        y = self._values(column(self.label), self.label, start, label=True)
        if y is not None:
            self.label_parts.append(y)
        for index, name in enumerate(self.features):
            values = self._values(column(name), name, start, label=False)
            if values is not None:
                yield index, values

    def _values(self, column: Any, name: str, start: int, *, label: bool) -> np.ndarray | None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if name not in self.kinds:
            self.kinds[name] = column.type
            self.flags[name] = (_is_binary(column.type), _is_numeric(column.type), _is_text(column.type))
        binary, numeric, text = self.flags[name]
        if binary:
            if name not in self.bad_utf8:
                index = _first_invalid_utf8(column)
                if index >= 0:
                    self.bad_utf8[name] = start + index
            return self._refuse()
        if column.null_count:
            count, first = self.nulls.get(name, (0, -1))
            if first < 0:
                first = start + int(pc.index(pc.is_null(column), True).as_py())
            self.nulls[name] = (count + column.null_count, first)
            return self._refuse()
        if label:
            if not (numeric or text):
                return self._refuse()
            if text:
                empty = pc.equal(pc.utf8_trim_whitespace(column), "")
                count = int(pc.sum(empty).as_py() or 0)
                if count:
                    total, first = self.empty_labels
                    if first < 0:
                        first = start + int(pc.index(empty, True).as_py())
                    self.empty_labels = (total + count, first)
                    return self._refuse()
        elif not numeric:
            if text:
                if start == 0:
                    self.first_text[name] = column[0].as_py()
                if name not in self.non_number:
                    index = _first_non_number(column)
                    if index >= 0:
                        self.non_number[name] = (start + index, column[index].as_py())
            return self._refuse()
        if self.refused:
            return None
        values = column.to_numpy(zero_copy_only=False)
        return values.astype(str) if values.dtype.hasobject else values

    def _refuse(self) -> None:
        self.refused = True

    def check(self) -> None:
        """Raise the first column problem, in the order and the words of the in-memory checks."""
        for name in (self.label, *self.features):
            kind = self.kinds[name]
            if _is_binary(kind):
                where = f" (first at {self.row_label(self.bad_utf8[name])})" if name in self.bad_utf8 else ""
                raise DataError(f"column {name!r} contains bytes that are not UTF-8 text{where}; save the "
                                "file as UTF-8", name)
            if name in self.nulls:
                count, first = self.nulls[name]
                raise DataError(f"column {name!r} has {_plural(count, 'missing value')} (empty cells or "
                                f"NA/NaN); first at {self.row_label(first)}", name)
            if name == self.label:
                if not (_is_numeric(kind) or _is_text(kind)):
                    raise DataError(f"label column {name!r} has type {kind}; use integer or text labels",
                                    name)
                count, first = self.empty_labels
                if count:
                    raise DataError(f"column {name!r} has {_plural(count, 'missing (empty) label')}; first "
                                    f"at {self.row_label(first)}", name)
            elif not _is_numeric(kind):
                example = ""
                if _is_text(kind):  # no value reads as a number: the first one is the example
                    index, value = self.non_number.get(name, (0, self.first_text.get(name)))
                    example = f" (e.g. {value!r} at {self.row_label(index)})"
                raise DataError(f"feature column {name!r} is not numeric: type {kind}{example}. All columns "
                                "except the label must be numbers; encode categories as numbers first", name)

    def labels(self) -> np.ndarray:
        return self.label_parts[0] if len(self.label_parts) == 1 else np.concatenate(self.label_parts)

    def locate(self, row: int, col: int) -> str:
        return f"{self.row_label(row)}, column {self.features[col]!r}"


def table_to_data(table: Any, label_column: str | None, row_label: Callable[[int], str]) -> LoadedData:
    label, features = _table_layout(_column_names(table), table.num_rows > 0, label_column)
    scan = _TableScan(label, features, row_label)
    x = scan.add(table)
    scan.check()
    return _finalize(x, scan.labels(), label=label, locate=scan.locate)


# ------------------------------------------------------------------------ streamed canonical csv/parquet

def _batch_rows(width: int) -> int:
    """Rows per checked piece: about TABLE_BATCH_BYTES of values, at least MIN_BATCH_ROWS rows (a wide
    table's per-column work is then spread over as many rows; with the column limit that is a few MB)."""
    by_bytes = TABLE_BATCH_BYTES // (8 * max(1, width))
    return max(1, min(TABLE_BATCH_ROWS, max(MIN_BATCH_ROWS, by_bytes)))


def _check_width(count: int, max_columns: int | None) -> None:
    """Refuse a table wider than ``max_columns`` from its header, before any of its rows is converted."""
    if max_columns is not None and count > max_columns:
        raise LimitError(f"the table has {count:,} columns, above the limit of {max_columns:,} (label "
                         "included)", "file", "columns")


def _row_pieces(batches: Iterable[Any], width: int) -> Iterator[Any]:
    """The rows of ``batches`` in pieces of ``_batch_rows(width)`` (the last one shorter): big batches
    are sliced, small ones (CSV blocks) combined into a table of slices; neither copies."""
    import pyarrow as pa

    limit = _batch_rows(width)
    pending: list[Any] = []
    count = 0
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            take = min(limit - count, batch.num_rows - start)
            pending.append(batch.slice(start, take))
            count, start = count + take, start + take
            if count == limit:
                yield pending[0] if len(pending) == 1 else pa.Table.from_batches(pending)
                pending, count = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else pa.Table.from_batches(pending)


def _finish_npy(target: Path, header_bytes: int, shape: tuple[int, int]) -> None:
    """Put the real shape into an .npy whose rows were appended behind a placeholder header. numpy pads
    a header so that the row count can grow in place; where the length differs the rows are copied."""
    header = io.BytesIO()
    _write_npy_header(header, shape, np.dtype(np.float32))
    if len(header.getvalue()) == header_bytes:
        with open(target, "r+b") as out:
            out.write(header.getvalue())
        return
    staged = target.with_name(target.name + ".part")
    with open(target, "rb") as source, open(staged, "wb") as out:
        out.write(header.getvalue())
        source.seek(header_bytes)
        shutil.copyfileobj(source, out, _data.STREAM_BLOCK_BYTES)  # read at call time
    os.replace(staged, target)


def _stream_table(schema: Any, batches: Iterator[Any], drain: Callable[[], None], label_column: str | None,
                  row_label: Callable[[int], str], directory: Path,
                  max_columns: int | None = None) -> LoadedData:
    """``save_canonical(directory, table_to_data(table, ...))`` for a table read batch by batch.

    The batches are checked by ``_TableScan`` as the whole table is, float32 rows go to ``X.npy`` as they
    pass, and the labels are then checked and encoded as ``_finalize`` does. A layout error (names,
    label column) waits until ``drain`` has parsed the whole file: the in-memory reader fails on a broken
    file before any check."""
    _check_width(len(schema), max_columns)
    pieces = _row_pieces(batches, len(schema))
    first = next(pieces, None)
    try:
        label, features = _table_layout(_column_names(schema), first is not None, label_column)
    except DataError:
        if first is not None:
            drain()
        raise
    def fill(out: Any, scan: _TableScan, finite: _FiniteScan) -> None:
        for piece in itertools.chain([first], pieces):
            _append_rows(out, scan, finite, piece)

    return _write_table(directory, _TableScan(label, features, row_label), fill)


def _write_table(directory: Path, scan: _TableScan,
                 fill: Callable[[Any, _TableScan, _FiniteScan], None]) -> LoadedData:
    """X.npy behind a placeholder header, its rows appended by ``fill``; after the last row the remaining
    checks of ``_finalize`` in its order, then the real header, y.npy and meta.json."""
    finite = _FiniteScan()
    with open(directory / "X.npy", "wb") as out:
        _write_npy_header(out, (0, len(scan.features)), np.dtype(np.float32))
        header_bytes = out.tell()
        fill(out, scan, finite)
    scan.check()
    y = _label_array(scan.labels(), scan.label)
    finite.check("X", scan.locate)
    codes, _, names = _encode_labels(y, None, scan.label)
    _finish_npy(directory / "X.npy", header_bytes, (scan.rows, len(scan.features)))
    _save_rows(directory / "y.npy", codes, np.int64)
    for key in ("X_val", "y_val"):
        (directory / f"{key}.npy").unlink(missing_ok=True)
    _write_meta(directory, names, len(scan.features), scan.rows, 0, codes, None)
    return load_canonical(directory, mmap=True)


def _open_csv(path: Path, block: int, read: dict[str, Any] | None = None,
              convert: dict[str, Any] | None = None) -> tuple[Any, list[Any]]:
    """pyarrow's streaming CSV reader with ``read_csv``'s options (serial) and ``block``-byte blocks."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    first_bad, on_invalid_row = _invalid_row_recorder()
    try:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=block, **(read or {})),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
            convert_options=pacsv.ConvertOptions(**(convert or {})))
    except (UnicodeDecodeError, pa.ArrowInvalid) as exc:
        raise _csv_error(exc, first_bad, streaming=True) from exc
    return reader, first_bad


def _csv_batches(reader: Any, first_bad: list[Any]) -> Iterator[Any]:
    import pyarrow as pa

    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (UnicodeDecodeError, pa.ArrowInvalid) as exc:
            raise _csv_error(exc, first_bad, streaming=True) from exc
        yield batch


def _drain_csv(path: Path, block: int) -> None:
    """Parse the whole file, converting nothing: read_csv reports a parse error anywhere in the file
    before the table is checked, so a streamed upload does too."""
    import pyarrow as pa

    reader, first_bad = _open_csv(path, block, read={"autogenerate_column_names": True},
                                  convert={"include_columns": ["f0"], "column_types": {"f0": pa.binary()}})
    with reader:
        for _ in _csv_batches(reader, first_bad):
            pass


# The order in which pyarrow's CSV inference loosens a column's type (an unlisted type sorts before double).
_CSV_INFERENCE_ORDER = ("null", "int64", "bool", "date32[day]", "time32[s]", "timestamp[s]", "timestamp[ns]",
                        "double", "string", "binary")


def _looser(current: Any, other: Any) -> Any:
    def rank(kind: Any) -> float:
        name = str(kind)
        return _CSV_INFERENCE_ORDER.index(name) if name in _CSV_INFERENCE_ORDER else 6.5

    return other if current is None or rank(other) > rank(current) else current


def _csv_block_types(path: Path, count: int, block: int) -> dict[int, Any]:
    """Per column, the loosest of the types pyarrow infers for each block of the file on its own.

    The cells are read as raw bytes (nothing converted, so nothing fails) and each block goes back
    through pyarrow's inference as a quoted CSV. read_csv gives a column the first type, in a fixed
    order, that takes every value, so each block's type is at most the column's: when a pass with these
    types converts every block, they are read_csv's types. A parse error ends the probe (the pass that
    follows stops at it too)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"f{i}" for i in range(count)]
    kinds: dict[int, Any] = {}
    try:
        reader, first_bad = _open_csv(path, block, read={"autogenerate_column_names": True, "skip_rows": 1},
                                      convert={"column_types": dict.fromkeys(names, pa.binary())})
        with reader:
            for batch in _csv_batches(reader, first_bad):
                text = {}
                for index in range(min(count, batch.num_columns)):
                    try:
                        text[f"c{index}"] = batch.column(index).cast(pa.string())
                    except pa.ArrowInvalid:  # not UTF-8: only binary takes it
                        kinds[index] = pa.binary()
                if not text or batch.num_rows == 0:
                    continue
                buffer = io.BytesIO()
                pacsv.write_csv(pa.table(text), buffer)
                inferred = pacsv.read_csv(io.BytesIO(buffer.getvalue()),
                                          read_options=pacsv.ReadOptions(use_threads=False),
                                          parse_options=pacsv.ParseOptions(newlines_in_values=True)).schema
                for name, kind in zip(inferred.names, inferred.types, strict=True):
                    kinds[int(name[1:])] = _looser(kinds.get(int(name[1:])), kind)
    except (DataError, _TypeChange):
        pass
    return kinds


def _csv_column_type(path: Path, name: str) -> Any:
    """read_csv's type for one column, from read_csv itself (that column is held in memory)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    first_bad, on_invalid_row = _invalid_row_recorder()
    try:
        table = pacsv.read_csv(str(path), read_options=pacsv.ReadOptions(use_threads=False),
                               parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
                               convert_options=pacsv.ConvertOptions(include_columns=[name]))
    except (UnicodeDecodeError, pa.ArrowInvalid) as exc:
        raise _csv_error(exc, first_bad) from exc
    return table.schema.field(0).type


def _first_line(path: Path) -> bytes:
    """The file's first line (its header), or its first CSV_MAX_BLOCK_BYTES when longer."""
    with open(path, "rb") as handle:
        head = handle.read(CSV_MAX_BLOCK_BYTES)
    end = head.find(b"\n")
    return head if end < 0 else head[:end + 1]


def _csv_block_bytes(header: bytes) -> int:
    """The streaming block: CSV_BLOCK_BYTES, or room for CSV_ROWS_PER_BLOCK rows of a wide table (judged by
    its header line). pyarrow's cost per block grows with the columns, so wide rows in small blocks made
    the parse far slower per byte than a narrow table's."""
    if len(header) <= CSV_WIDE_LINE_BYTES:
        return CSV_BLOCK_BYTES
    return max(CSV_BLOCK_BYTES, min(CSV_MAX_BLOCK_BYTES, len(header) * CSV_ROWS_PER_BLOCK))


def _check_header_width(header: bytes, max_columns: int | None) -> None:
    """A header without quotes has exactly one more column than commas: a table far over the limit is
    refused before pyarrow parses a block of it (with quotes, pyarrow's header decides)."""
    if max_columns is not None and b'"' not in header:
        _check_width(header.count(b",") + 1, max_columns)


def canonicalize_csv(path: Path, directory: Path, label_column: str | None,
                     max_columns: int | None = None) -> LoadedData:
    """The csv path of ``canonicalize_file``: one streamed pass, as a rule. A parse error is confirmed
    with read_csv's block size, which gives read_csv's outcome (that error, or none)."""
    _check_csv_encoding(path)
    header = _first_line(path)
    _check_header_width(header, max_columns)
    error: _CsvParseError | None = None
    for block in dict.fromkeys((_csv_block_bytes(header), _READ_CSV_BLOCK_BYTES)):
        try:
            return _stream_csv(path, directory, label_column, block, max_columns)
        except _CsvParseError as exc:
            error = exc
    assert error is not None
    raise DataError(error.message, error.field) from error.__cause__


def _stream_csv(path: Path, directory: Path, label_column: str | None, block: int,
                max_columns: int | None = None) -> LoadedData:
    """pyarrow's streaming reader fixes each column's type on the first block. When a later block does
    not fit (read_csv would have loosened the type), the file is read again with read_csv's types: first
    the loosest type of any block for every column (``_csv_block_types``), then, for a column that still
    does not fit, read_csv's inference of that column alone."""
    column_types: dict[str, Any] = {}
    schema: Any = None
    probed, settled = False, set()
    while True:
        try:
            reader, first_bad = _open_csv(path, block, convert={"column_types": column_types})
            with reader:
                schema = schema if schema is not None else reader.schema
                return _stream_table(reader.schema, _csv_batches(reader, first_bad),
                                     lambda: _drain_csv(path, block), label_column, csv_line, directory,
                                     max_columns)
        except _TypeChange as change:
            if schema is None:  # the first pass infers every type on its first block: cannot happen
                raise DataError("the CSV file could not be parsed", "file") from None
            try:
                names = _column_names(schema)
            except DataError:
                _drain_csv(path, block)
                raise
            name = names[change.column]
            if not probed:
                probed = True
                loosest = _csv_block_types(path, len(names), block)
                column_types = {names[i]: kind for i, kind in loosest.items()}
            elif name not in settled:
                settled.add(name)
                column_types[name] = _csv_column_type(path, name)
            else:
                raise DataError(f"the CSV file could not be parsed: column {name!r} changes type",
                                name) from None


def canonicalize_parquet(path: Path, directory: Path, label_column: str | None,
                         max_columns: int | None = None, max_bytes: int | None = None) -> LoadedData:
    """The parquet path of ``canonicalize_file``, row group by row group.

    pyarrow decodes a whole row group even for ``iter_batches`` (and writers put up to 1Mi rows in
    one), so a row group up to ``PARQUET_GROUP_BYTES`` is read whole and checked in pieces, and a larger
    one column by column: each column's float32 values go to a scratch file, whose row blocks then go
    to X.npy (host memory: one column of the row group and one block)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def failed(exc: Exception) -> DataError:
        return _parquet_error(exc, path)

    try:
        parquet = pq.ParquetFile(str(path), buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise failed(exc) from exc
    with parquet:
        metadata = parquet.metadata
        groups = [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]

        def read(index: int, columns: list[str] | None) -> Any:
            try:
                table = parquet.read_row_group(index, columns=columns, use_threads=False)
            except (pa.ArrowException, OSError) as exc:
                raise failed(exc) from exc
            if table.num_rows != groups[index]:
                raise failed(ValueError(f"row group {index} holds {table.num_rows} rows, its metadata says "
                                        f"{groups[index]}"))
            return table

        _check_width(len(parquet.schema_arrow), max_columns)
        columns = _column_names(parquet.schema_arrow)
        if len(set(columns)) < len(columns):
            read_parquet(path)  # read_table refuses duplicate names (before reading data), in its words
        try:
            label, features = _table_layout(columns, sum(groups) > 0, label_column)
        except DataError:
            for index in range(len(groups)):  # read_table fails on a corrupted file before any check
                for name in dict.fromkeys(columns):
                    read(index, [name])
            raise
        stored = sum(groups) * (4 * len(features) + 8)  # float32 features, int64 labels
        if max_bytes is not None and stored > max_bytes:  # (encodings such as RLE make tiny files of it)
            raise LimitError(f"the parquet file would be stored as {_data._size(stored)} of float32 features "
                             f"and labels, above the limit of {_data._size(max_bytes)}", "file",
                             "decompressed_bytes")

        def fill(out: Any, scan: _TableScan, finite: _FiniteScan) -> None:
            for index, rows in enumerate(groups):
                if rows == 0:
                    continue
                if rows * (len(features) + 1) * 8 <= PARQUET_GROUP_BYTES:
                    table = read(index, None)
                    step = _batch_rows(len(columns))
                    for first in range(0, rows, step):
                        _append_rows(out, scan, finite, table.slice(first, step))
                else:
                    _parquet_group_by_columns(lambda name, index=index: read(index, [name]).column(0), rows,
                                              scan, finite, out, directory / "X.columns.part")

        return _write_table(directory, _TableScan(label, features, parquet_row), fill)


def _append_rows(out: Any, scan: _TableScan, finite: _FiniteScan, piece: Any) -> None:
    """Check one batch of table rows and append its float32 features to ``X.npy``."""
    start = scan.rows
    block = scan.add(piece)
    if block is not None:
        _write_rows(out, block, start, finite)


def _write_rows(out: Any, block: np.ndarray, start: int, finite: _FiniteScan) -> None:
    finite.update(block, start)
    if finite.first is None:  # past the first bad value only the counts are still needed
        block.tofile(out)


def _parquet_group_by_columns(column: Callable[[str], Any], rows: int, scan: _TableScan, finite: _FiniteScan,
                              out: Any, scratch_path: Path) -> None:
    """One row group read column by column: float32 columns to a scratch file, then row blocks to X."""
    start, width = scan.rows, len(scan.features)
    try:
        with open(scratch_path, "w+b") as scratch:
            with np.errstate(over="ignore"):  # overflow becomes inf, which the finite check reports
                for _, values in scan.add_columns(rows, column):
                    values.astype(np.float32).tofile(scratch)
            if scan.refused:
                return
            scratch.flush()
            step = max(1, PARQUET_TRANSPOSE_BYTES // (4 * width))
            piece = np.empty(step, dtype=np.float32)
            for first in range(0, rows, step):
                count = min(step, rows - first)
                block = np.empty((count, width), dtype=np.float32)
                for index in range(width):
                    buffer = piece[:count]
                    done = os.preadv(scratch.fileno(), [buffer], (index * rows + first) * 4)
                    if done != buffer.nbytes:
                        raise OSError(f"short read from {scratch_path.name}")
                    block[:, index] = buffer
                _write_rows(out, block, start + first, finite)
    finally:
        scratch_path.unlink(missing_ok=True)
