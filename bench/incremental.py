"""Incremental retraining against a fresh job, side by side (issue 17's bars).

For each task and seed: a test split is held out (20%, stratified); the rest is cut in two halves A and B.
The *fresh* job trains on A + B (both phases). The *parent* trains on A and keeps its sufficient
statistics (as every service job does at export; not timed). The *child* adds B on the parent's frozen
structure exactly as the worker runs it (``glai_core.incremental.plan`` and ``run_incremental``, mode
``auto`` unless ``--phase2`` says otherwise): the
clock covers placing B and A's validation rows, the closed form from the summed statistics (or phase 2
on the union where the statistics do not fit) and its scoring. Both models are scored on the test split.

Bars: test accuracy within 0.3 pp of the fresh job; child wall time <= 1/3 of the fresh job's.

    python -m bench.incremental --tasks digits,hpc,storms,mnist-5k --seeds 0,1,2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glai_core import statistics
from glai_core.config import TrainConfig
from glai_core.data import LoadedData
from glai_core.hooks import Hooks
from glai_core.incremental import Parent, plan, run_incremental
from glai_core.metrics import evaluate
from glai_core.parts import Part, place_part, split, train_blocks
from glai_core.pipeline import run_pipeline

ACCURACY_BAR_PP = 0.3
TIME_BAR = 1 / 3
MAX_STATISTICS_BYTES = 256 * 1024**2  # the service's default GLAI_MAX_STATISTICS_BYTES
PHASE2 = "auto"  # the child's lineage.phase2 (--phase2)


def load_task(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A suite table (``bench.suite_data``) or a built-in data set, as float32 / int64 arrays."""
    from bench.suite_data import by_name

    table = by_name()[name].load()
    return np.asarray(table.x, dtype=np.float32), np.asarray(table.y, dtype=np.int64), list(table.class_names)


def config(seed: int) -> TrainConfig:
    cfg = TrainConfig()
    cfg.device, cfg.seed = "cpu", seed
    cfg.baseline.enabled = False
    cfg.pruning.enabled = False
    return cfg


def _split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=0.2, stratify=y, random_state=seed)
    a, b = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed + 100)
    return np.sort(a), np.sort(b), np.sort(test)


def _test_accuracy(block: Any, standardizer: Any, x: np.ndarray, y: np.ndarray) -> float:
    rows = standardizer.apply(torch.from_numpy(x))
    return float(evaluate(block, rows, torch.from_numpy(y))[1])


def one(name: str, x: np.ndarray, y: np.ndarray, classes: list[str], seed: int) -> dict[str, Any]:
    a, b, test = _split(y, seed)
    union = np.sort(np.concatenate([a, b]))

    def data(index: np.ndarray) -> LoadedData:
        return LoadedData(x[index], y[index], class_names=classes)

    started = time.perf_counter()
    fresh = run_pipeline(data(union), config(seed), Hooks())
    fresh_s = time.perf_counter() - started
    parent = run_pipeline(data(a), config(seed), Hooks())
    names = [str(c) for c in classes]
    part_a, part_b = Part("A", seed, 0.2), Part("B", seed, 0.2)
    sums = None
    from glai_core.solvers import feature_dim

    if statistics.statistics_bytes(feature_dim(parent.glai), len(names)) <= MAX_STATISTICS_BYTES:
        sums = statistics.accumulate(parent.glai, train_blocks(data(a), part_a, names, parent.standardizer),
                                     names, [part_a.to_dict()])
    started = time.perf_counter()
    block, cfg = parent.glai, config(seed)
    old_train, old_val = (len(i) for i in split(data(a), part_a))
    new_train, new_val = (len(i) for i in split(data(b), part_b))
    chosen = plan(PHASE2, cfg.quantitative, sums, statistics.structure_digest(block.structure),
                  n_new=new_train, n_union=old_train + new_train, n_val=old_val + new_val,
                  d=block.in_features, hidden=block.hidden, m=len(names))
    old = place_part(data(a), part_a, names, parent.standardizer, with_train=chosen.mode == "refit")
    new = place_part(data(b), part_b, names, parent.standardizer)
    child = run_incremental(Parent(block, parent.standardizer, names, sums), [old], [new], names, cfg,
                            Hooks(), chosen_plan=chosen)
    child_s = time.perf_counter() - started
    fresh_acc = _test_accuracy(fresh.glai, fresh.standardizer, x[test], y[test])
    child_acc = _test_accuracy(child.glai, child.standardizer, x[test], y[test])
    return {"task": name, "seed": seed, "n": int(len(union)), "test_rows": int(len(test)),
            "mode": child.summary["incremental"]["mode"], "why": chosen.why, "fresh_accuracy": fresh_acc,
            "child_accuracy": child_acc,
            "parent_accuracy": _test_accuracy(parent.glai, parent.standardizer, x[test], y[test]),
            "delta_pp": 100 * (child_acc - fresh_acc), "fresh_s": fresh_s, "child_s": child_s,
            "time_ratio": child_s / fresh_s, "fresh_solver": fresh.summary.get("phase2_solver"),
            "fresh_structural_epochs": fresh.summary.get("structural_epochs")}


def _warm_up() -> None:
    """The first pipeline call in a process pays one-off set-up (seconds): not part of either clock."""
    x, y, classes = load_task("iris")
    run_pipeline(LoadedData(x, y, class_names=classes), config(0), Hooks())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="digits,hpc,storms,mnist-5k")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    parser.add_argument("--phase2", choices=["auto", "statistics", "refit"], default="auto",
                        help="how the child refits: as the service's incremental.phase2")
    args = parser.parse_args()
    global PHASE2
    PHASE2 = args.phase2
    torch.set_num_threads(args.threads)
    print(f"CPU, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start (torch {torch.__version__})")
    _warm_up()
    rows = []
    for name in args.tasks.split(","):
        x, y, classes = load_task(name)
        for seed in (int(s) for s in args.seeds.split(",")):
            row = one(name, x, y, classes, seed)
            rows.append(row)
            print(f"{name:10s} seed {seed}  fresh {row['fresh_accuracy']:.4f} in {row['fresh_s']:6.2f} s "
                  f"| child {row['child_accuracy']:.4f} in {row['child_s']:6.2f} s ({row['mode']})  "
                  f"delta {row['delta_pp']:+.2f} pp  time ratio {row['time_ratio']:.3f}", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    header = f"{'task':10s} {'mode':10s} {'test rows':>9s} {'fresh acc':>9s} {'child acc':>9s} " \
             f"{'delta pp':>8s} {'fresh s':>8s} {'child s':>8s} {'ratio':>6s}  " \
             f"bars (<= {ACCURACY_BAR_PP} pp, <= 1/3)"
    print(header)
    for name in dict.fromkeys(r["task"] for r in rows):
        task = [r for r in rows if r["task"] == name]
        delta = stat.mean(r["delta_pp"] for r in task)
        ratio = stat.median(r["time_ratio"] for r in task)
        ok = ("pass" if delta >= -ACCURACY_BAR_PP else "FAIL") + " / " \
            + ("pass" if ratio <= TIME_BAR else "FAIL")
        print(f"{name:10s} {task[0]['mode']:10s} {task[0]['test_rows']:9d} "
              f"{stat.mean(r['fresh_accuracy'] for r in task):9.4f} "
              f"{stat.mean(r['child_accuracy'] for r in task):9.4f} "
              f"{delta:+8.2f} {stat.median(r['fresh_s'] for r in task):8.2f} "
              f"{stat.median(r['child_s'] for r in task):8.2f} {ratio:6.3f}  {ok}")
    print("(accuracy: mean over seeds on the held-out test split; seconds and ratio: medians)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
