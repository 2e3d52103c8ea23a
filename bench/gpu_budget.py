"""Device memory under a budget (issue 5, target 3), measured on the worker's own data path.

    python -m bench.gpu_budget                                   # 1,000,000 x 768 float32 (3.07 GB)
    python -m bench.gpu_budget --rows 50000 --device cpu         # a dry run of the script

``bench.scale`` takes the data set through the whole service (PostgreSQL, Redis, uvicorn, Celery), which
a lent GPU machine does not have. This is the part of that path that touches the GPU: a generated N x 768
float32 class mixture written as ``X.npy`` block by block and memory-mapped as the worker maps a canonical
array; then, per budget, ``glai_core.streaming.place`` (resident when both splits fit the budget, else
pinned host rows gathered per batch), one epoch of S, S's gate cache, and one epoch of phase 2 (Adam).
The table gives the peak device memory PyTorch allocated in each run (``torch.cuda.max_memory_allocated``)
next to the budget, the process's peak resident memory (VmHWM, reset per run) against the data set,
seconds per stage and the validation accuracy after phase 2. The RSS includes the interpreter and torch
(about 0.5 GB before any data).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import console, describe_device, pick_device, report, timed
from glai_core.hooks import Hooks
from glai_core.model import GLAIBlock, StructuralMLP, match_parameters
from glai_core.streaming import peak_rss_bytes, place, reset_peak_rss
from glai_core.train import FitSettings, fit

D, CLASSES = 768, 10
COLUMNS = ["budget", "placement", "data set", "device peak", "device peak / budget", "host peak RSS",
           "RSS / data set", "place s", "S epoch s", "gate cache s", "phase-2 epoch s", "val acc"]


def write_x(path: Path, rows: int, seed: int = 0, block_rows: int = 65536) -> np.ndarray:
    """A Gaussian class mixture (overlapping classes: learnable, not trivial) written block by block into
    ``path`` as a float32 .npy, never held in memory whole; returns the labels."""
    rng = np.random.default_rng(seed)
    means = (rng.standard_normal((CLASSES, D)) * (2.2 / np.sqrt(D))).astype(np.float32)
    labels = rng.integers(0, CLASSES, size=rows).astype(np.int64)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, D))
    for start in range(0, rows, block_rows):
        y = labels[start:start + block_rows]
        x[start:start + y.shape[0]] = rng.standard_normal((y.shape[0], D), dtype=np.float32) + means[y]
    x.flush()
    del x
    return labels


def run_budget(path: Path, labels: np.ndarray, budget: int | None, device: torch.device,
               batch_size: int) -> list[object]:
    x = np.load(path, mmap_mode="r")
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with timed(device) as place_s:
        placement = place(x, labels, None, None, n_classes=CLASSES, validation_fraction=0.1, seed=0,
                          device=device, budget_bytes=budget)
    match = match_parameters(D, [128], CLASSES)
    torch.manual_seed(0)
    structure = StructuralMLP(D, match.glai_hidden, CLASSES).to(device)
    settings = FitSettings(epochs=1, lr=1e-3, batch_size=batch_size, keep_best=False)
    with timed(device) as s_s:
        fit(structure, placement.train, placement.val, settings, Hooks(), "S")
    with timed(device) as gates_s:
        train, val = placement.train.with_gates(structure), placement.val.with_gates(structure)
    block = GLAIBlock.from_structure(structure)
    q_settings = FitSettings(epochs=1, lr=3e-4, batch_size=batch_size, keep_best=False)
    with timed(device) as q_s:
        q = fit(block, train, val, q_settings, Hooks(), "quantitative")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    data = placement.data_bytes
    rss = peak_rss_bytes()
    return [_gb(placement.budget_bytes), placement.mode, _gb(data), "n/a" if peak is None else _gb(peak),
            "-" if peak is None or not placement.budget_bytes else f"{peak / placement.budget_bytes:.2f}",
            _gb(rss), f"{rss / data:.2f}x", place_s[0], s_s[0], gates_s[0], q_s[0],
            q.history[-1]["val_accuracy"]]


def _gb(value: float | None) -> str:
    return "unlimited" if value is None else f"{value / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0, 1e9],
                        help="bytes; 0 = the default (half the GPU's free memory; unlimited on CPU)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    title = f"device memory under a budget: {args.rows:,} x {D} float32, {describe_device(device)}"
    console.print(title)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "X.npy"
        with timed(device) as write_s:
            labels = write_x(path, args.rows)
        console.print(f"  wrote {path.stat().st_size / 1e9:.2f} GB in {write_s[0]:.1f} s")
        warm = Path(tmp) / "warm.npy"  # one small run first: CUDA's and cuBLAS's one-off start-up costs
        run_budget(warm, write_x(warm, 4 * args.batch_size), None, device, args.batch_size)
        warm.unlink()
        rows = []
        for budget in args.budgets:
            rows.append(run_budget(path, labels, int(budget) or None, device, args.batch_size))
            console.print(f"  budget {rows[-1][0]}: {rows[-1][1]}, device peak {rows[-1][3]}")
    report(title, COLUMNS, rows, as_markdown=args.markdown)


if __name__ == "__main__":
    main()
