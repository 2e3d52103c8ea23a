"""Bounded-memory data paths: from canonical arrays on disk to training tensors without full copies.

Why: a canonical ``X.npy`` is memory-mapped by the worker, and reading it *through* the map makes every
touched page count in the process's resident set; materialising a standardised copy on top of that (plus
the train/validation split's fancy-indexed copies) used to cost ~3-4x the data set in host memory.

Here every pass over ``X`` reads row blocks with ``pread`` into one reusable buffer (``RowReader``), so
host memory is what the *destination* needs and nothing more:

* ``split_indices``: the stratified, seeded hold-out of ``data.train_val_split`` as sorted index arrays
  (identical draws), so nothing is copied to split;
* ``fit_standardizer``: ``Standardizer.fit`` over the selected rows, fed in the same 65,536-row chunks, so
  mean and std are bit-identical to fitting on a materialised training copy;
* ``place``: one pass that standardises each block and scatters its rows into the training and validation
  tensors. On the device when they fit ``budget_bytes`` (GPU: host memory stays at one block); otherwise
  they stay in host memory or -- on CPU -- are read from the raw memory map batch by batch, and
  ``HostRows`` gathers each batch and moves it to the device. For CUDA the rows are gathered into two
  small pinned staging buffers used in turn, so each copy is asynchronous and the next batch is gathered
  while the last one is copied. The splits themselves are not pinned: a random gather out of pinned
  memory lands in pageable memory anyway, and torch's pinned allocator rounds every block up to a power
  of two (a 2.8 GB split took 4 GB, measured on an H100 machine: host peak 2.03x the data set).

``HostRows`` stands in for ``DeviceSet.x``: indexing with a slice or an index tensor returns a device
tensor, and ``shape``/``device``/``dtype``/``new_ones``/``@`` behave like the tensor it replaces, which
covers the training loop, evaluation, gate caching, the ridge solvers and pruning (the dual solve's
``x.T`` materialises the split: it is only chosen when an N x N kernel fits, i.e. for small N).
"""

from __future__ import annotations

import mmap
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glai_core.data import split_indices
from glai_core.preprocess import Standardizer
from glai_core.train import DeviceSet

BLOCK_BYTES = 32 * 1024**2  # one read buffer; bounds the host memory of every pass
FIT_CHUNK = 65536  # Standardizer.fit's chunk: the same grouping gives bit-identical sums
DEFAULT_CUDA_BUDGET_FRACTION = 0.5  # of the device's free memory at placement, when no budget is configured


# ------------------------------------------------------------------------------------------ memory

def _status_bytes(field: str, pid: int | str) -> int:
    """One memory field of /proc/<pid>/status (reported in kB), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not reported (not Linux?)")


def peak_rss_bytes(pid: int | str = "self") -> int:
    """VmHWM (peak resident set, file-backed pages of memory maps included) of a process, in bytes."""
    return _status_bytes("VmHWM", pid)


def current_rss_bytes(pid: int | str = "self") -> int:
    return _status_bytes("VmRSS", pid)


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ reading

def _file_source(x: Any) -> tuple[str, int] | None:
    """(path, byte offset) when ``x`` is a whole, C-ordered ``np.memmap`` (what ``np.load`` returns)."""
    if (isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap) and x.flags.c_contiguous
            and getattr(x, "filename", None)):
        return str(x.filename), int(x.offset)
    return None


class RowReader:
    """Row blocks of a 2-D array. A memory map is read with ``pread`` into a reused buffer instead of
    through the map, so a pass over a file-backed array never grows the resident set past one block."""

    def __init__(self, x: Any, block_bytes: int | None = None) -> None:
        block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
        self.x = x
        self.n = int(x.shape[0])
        self.d = int(np.prod(x.shape[1:])) if len(x.shape) > 1 else 1
        self.dtype = np.dtype(x.dtype)
        self.row_bytes = max(1, self.d * self.dtype.itemsize)
        self.block_rows = max(1, block_bytes // self.row_bytes)
        source = _file_source(x)
        self._fd: int | None = None
        self._offset = 0
        self._buffer: np.ndarray | None = None
        if source is not None:
            self._fd = os.open(source[0], os.O_RDONLY)
            self._offset = source[1]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi as (hi-lo, d). Valid until the next ``read`` (it may reuse one buffer)."""
        if self._fd is None:
            return np.asarray(self.x[lo:hi]).reshape(hi - lo, self.d)
        if self._buffer is None or self._buffer.shape[0] < hi - lo:
            self._buffer = np.empty((max(hi - lo, self.block_rows), self.d), dtype=self.dtype)
        out = self._buffer[:hi - lo]
        view = memoryview(out.reshape(-1).view(np.uint8))
        position, done = self._offset + lo * self.row_bytes, 0
        while done < view.nbytes:
            got = os.preadv(self._fd, [view[done:]], position + done)
            if got <= 0:
                raise OSError(f"{self.x.filename}: unexpected end of file")  # type: ignore[union-attr]
            done += got
        return out

    def blocks(self) -> Any:
        """(lo, hi, rows) over the whole array, one block at a time."""
        for lo in range(0, self.n, self.block_rows):
            hi = min(self.n, lo + self.block_rows)
            yield lo, hi, self.read(lo, hi)

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Rows at sorted ``index`` (a new array), reading covering spans of at most one block."""
        out = np.empty((index.shape[0], self.d), dtype=self.dtype)
        start = 0
        while start < index.shape[0]:
            lo = int(index[start])
            stop = int(np.searchsorted(index, lo + self.block_rows, side="left"))
            hi = int(index[stop - 1]) + 1
            out[start:stop] = self.read(lo, hi)[index[start:stop] - lo]
            start = stop
        return out


class _Selected:
    """``x[index]`` for sorted ``index`` without building it: what ``Standardizer.fit`` slices."""

    def __init__(self, reader: RowReader, index: np.ndarray | None) -> None:
        self.reader, self.index = reader, index
        self.shape = (reader.n if index is None else int(index.shape[0]), reader.d)

    def __getitem__(self, part: slice) -> np.ndarray:
        if self.index is None:
            lo, hi, _ = part.indices(self.reader.n)
            return np.array(self.reader.read(lo, hi))
        return self.reader.gather(self.index[part])


# ------------------------------------------------------------------------------------------ split

def fit_standardizer(x: Any, index: np.ndarray | None = None) -> Standardizer:
    """``Standardizer.fit(x[index])`` read block by block; bit-identical to fitting the materialised rows."""
    with RowReader(x) as reader:
        return Standardizer.fit(_Selected(reader, index), chunk=FIT_CHUNK)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ host rows

class HostRows:
    """Rows kept off the device, gathered per batch: the stand-in for ``DeviceSet.x`` (see module doc).

    ``source`` is a host tensor (standardised rows, or a view of the raw memory map); ``rows`` maps this
    split's positions to source rows (None: all, in order); with ``standardizer`` each batch is
    standardised after the gather (raw memory-mapped source). Batches for a CUDA device go through
    ``staging``: two pinned buffers used in turn, each reused once its last copy has finished.
    """

    def __init__(self, source: Tensor, device: torch.device, rows: Tensor | None = None,
                 standardizer: Standardizer | None = None) -> None:
        self.source, self.device = source, torch.device(device)
        self.rows, self.standardizer = rows, standardizer
        n = source.shape[0] if rows is None else rows.shape[0]
        self.shape = torch.Size((n, *source.shape[1:]))
        self.dtype = torch.float32
        self.staging: list[Tensor | None] = [None, None]
        self._copied: list[Any] = [None, None]  # the CUDA event after each buffer's last copy
        self._turn = 0

    def __len__(self) -> int:
        return self.shape[0]

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def is_floating_point(self) -> bool:
        return True

    def new_ones(self, *size: Any, **kwargs: Any) -> Tensor:
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("dtype", self.dtype)
        return torch.ones(*size, **kwargs)

    def new_zeros(self, *size: Any, **kwargs: Any) -> Tensor:
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("dtype", self.dtype)
        return torch.zeros(*size, **kwargs)

    def _positions(self, key: Any) -> Tensor | slice:
        if isinstance(key, slice):
            return key
        if isinstance(key, Tensor):
            return key.to("cpu")
        return torch.as_tensor(np.asarray(key), dtype=torch.long)

    def __getitem__(self, key: Any) -> Tensor:
        positions = self._positions(key)
        if self.device.type == "cuda" and self.standardizer is None:
            return self._staged(positions)
        if self.rows is not None:
            batch = self.source.index_select(0, self.rows[positions])
        elif isinstance(positions, slice):
            batch = self.source[positions]
        else:
            batch = self.source.index_select(0, positions)
        if self.standardizer is not None:
            batch = self.standardizer.apply(batch)
        return batch.to(self.device, non_blocking=True)

    def _staged(self, positions: Tensor | slice) -> Tensor:
        """Gather into the next pinned buffer (after its previous copy is done), copy asynchronously."""
        index = self.rows[positions] if self.rows is not None else positions
        n = len(range(*index.indices(self.source.shape[0]))) if isinstance(index, slice) else index.shape[0]
        turn, self._turn = self._turn, 1 - self._turn
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()
        buffer = self.staging[turn]
        if buffer is None or buffer.shape[0] < n:
            buffer = torch.empty((n, *self.source.shape[1:]), dtype=self.source.dtype, pin_memory=True)
            self.staging[turn] = buffer
        out = buffer[:n]
        if isinstance(index, slice):
            out.copy_(self.source[index])
        else:
            torch.index_select(self.source, 0, index, out=out)
        batch = out.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._copied[turn] = event
        return batch

    def __matmul__(self, other: Tensor) -> Tensor:
        step = max(1, BLOCK_BYTES // max(1, 4 * self.shape[1]))
        return torch.cat([self[slice(s, s + step)] @ other for s in range(0, len(self), step)])

    @property
    def T(self) -> Tensor:  # noqa: N802 - the Tensor attribute it stands in for
        """The transposed split, materialised: only the dual ridge solve asks, and only for small N."""
        return self.materialize().T

    def materialize(self) -> Tensor:
        """The whole split as one device tensor (for code that needs a real tensor, e.g. the dual solve)."""
        step = max(1, BLOCK_BYTES // max(1, 4 * self.shape[1]))
        return torch.cat([self[slice(s, s + step)] for s in range(0, len(self), step)])


# ------------------------------------------------------------------------------------------ placement

@dataclass
class Placement:
    """The training and validation sets ready for ``fit``, and how they were placed."""

    train: DeviceSet
    val: DeviceSet
    standardizer: Standardizer
    mode: str  # "resident" (on the training device) or "streamed" (host rows gathered per batch)
    data_bytes: int  # float32 features + int64 labels of both splits
    budget_bytes: int | None


def resolve_budget(device: torch.device, budget_bytes: int | None) -> int | None:
    """The configured budget, else half the GPU's free memory on CUDA; None (unlimited) on CPU.

    Free, not total: a GPU shared with other jobs or processes has less to give, and the other half is
    left for the model, the gate caches and the solves.
    """
    if budget_bytes is not None:
        return int(budget_bytes)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEFAULT_CUDA_BUDGET_FRACTION)
    return None


def _scatter(reader: RowReader, targets: list[tuple[np.ndarray | None, Tensor]], standardizer: Standardizer
             ) -> None:
    """One pass over ``reader``: standardise each block and copy the rows of each target's sorted index
    into its destination tensor (on any device)."""
    cursors = [0] * len(targets)
    for lo, hi, block in reader.blocks():
        for t, (index, dest) in enumerate(targets):
            if index is None:
                a, b, rows = lo, hi, block
            else:
                a = cursors[t]
                b = int(np.searchsorted(index, hi, side="left"))
                if b == a:
                    continue
                rows = block[index[a:b] - lo]
            cursors[t] = b
            chunk = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
            if dest.device.type != "cpu":
                chunk = chunk.to(dest.device)
            dest[a:b] = standardizer.apply(chunk)


def _labels(y: np.ndarray, index: np.ndarray | None, device: torch.device) -> Tensor:
    values = np.asarray(y if index is None else np.asarray(y)[index], dtype=np.int64)
    return torch.from_numpy(np.ascontiguousarray(values)).to(device)


def _raw_tensor(x: Any) -> Tensor:
    """A CPU tensor over ``x``'s memory without a copy (read-only maps: torch warns, we never write)."""
    array = np.asarray(x)
    array = array.reshape(array.shape[0], -1)
    if array.dtype != np.float32 or not array.flags.c_contiguous:
        raise ValueError("streaming from the raw array needs C-ordered float32 features")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def place(x: Any, y: np.ndarray, x_val: Any, y_val: np.ndarray | None, *, n_classes: int,
          validation_fraction: float, seed: int, device: torch.device,
          budget_bytes: int | None = None) -> Placement:
    """Split (when there is no validation data), fit the standardiser on the training rows and place
    both splits, with host memory bounded by what the destination needs (see module doc)."""
    device = torch.device(device)
    if x_val is None:
        train_index, val_index = split_indices(y, n_classes, validation_fraction, seed)
        val_source, val_labels = x, y
    else:
        train_index, val_index = None, None
        val_source, val_labels = x_val, y_val
    d = int(np.prod(x.shape[1:]))
    n_train = x.shape[0] if train_index is None else train_index.shape[0]
    n_val = val_source.shape[0] if val_index is None else val_index.shape[0]
    need = (n_train + n_val) * (4 * d + 8)
    budget = resolve_budget(device, budget_bytes)
    resident = budget is None or need <= budget
    standardizer = fit_standardizer(x, train_index)
    y_train, y_val_t = _labels(y, train_index, device), _labels(val_labels, val_index, device)  # type: ignore[arg-type]
    if resident or device.type == "cuda":
        target = device if resident else torch.device("cpu")
        train_x = torch.empty((n_train, d), dtype=torch.float32, device=target)
        val_x = torch.empty((n_val, d), dtype=torch.float32, device=target)
        if val_index is None:
            with RowReader(x) as reader:
                _scatter(reader, [(train_index, train_x)], standardizer)
            with RowReader(val_source) as reader:
                _scatter(reader, [(None, val_x)], standardizer)
        else:
            with RowReader(x) as reader:
                _scatter(reader, [(train_index, train_x), (val_index, val_x)], standardizer)
        if resident:
            return Placement(DeviceSet(train_x, y_train), DeviceSet(val_x, y_val_t), standardizer, "resident",
                             need, budget)
        train_rows: Any = HostRows(train_x, device)
        val_rows: Any = HostRows(val_x, device)
    else:  # CPU over budget: batches gathered from the raw (memory-mapped) array, standardised per batch
        def rows(index: np.ndarray | None) -> Tensor | None:
            return None if index is None else torch.from_numpy(index.astype(np.int64))

        train_rows = HostRows(_raw_tensor(x), device, rows(train_index), standardizer)
        val_rows = HostRows(_raw_tensor(val_source), device, rows(val_index), standardizer)
    return Placement(DeviceSet(train_rows, y_train), DeviceSet(val_rows, y_val_t), standardizer, "streamed",
                     need, budget)


__all__ = ["BLOCK_BYTES", "HostRows", "Placement", "RowReader", "current_rss_bytes", "fit_standardizer",
           "peak_rss_bytes", "place", "reset_peak_rss", "resolve_budget", "split_indices"]
