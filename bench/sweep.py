"""A sweep of K heads in one pass against one head alone, side by side (issue 17's bar: K=8 <= 3x one head).

For each task, kind (GLAI, MLP) and repeat, interleaved: ``run_sweep`` with one head (the job's own lr and
seed), with K heads (a grid of learning rates x seeds), each to its own stop, and with the same K heads
under successive halving (``--halving ETA``, default 2; 0 leaves it out), on the same split, device and
thread count. Wall time covers the whole sweep as a job runs it (placing rows, every head's training and
early stopping, the best GLAI head's finishing phase 2). A sequential sweep would cost about K times one
head.

    python -m bench.sweep --tasks digits,mnist-5k,hpc --repeats 3 --threads 2
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

from glai_core.config import TrainConfig
from glai_core.data import LoadedData
from glai_core.hooks import Hooks
from glai_core.sweep import run_sweep

TIME_BAR = 3.0
GRID = {"lr": [3e-4, 1e-3, 3e-3, 1e-2], "seed": [0, 1]}  # K = 8
ONE = {"lr": [1e-3], "seed": [0]}


def load_task(name: str) -> LoadedData:
    from bench.suite_data import by_name

    table = by_name()[name].load()
    return LoadedData(np.asarray(table.x, dtype=np.float32), np.asarray(table.y, dtype=np.int64),
                      class_names=[str(c) for c in table.class_names])


def config(device: str) -> TrainConfig:
    cfg = TrainConfig()
    cfg.device = device
    cfg.pruning.enabled = False
    return cfg


def timed(data: LoadedData, kind: str, grid: dict[str, list[Any]], device: str) -> dict[str, Any]:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = run_sweep(data, config(device), grid, Hooks(), kinds=(kind,))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    accuracies = [h.val_accuracy for h in result.heads]
    epochs = [sum(h.epochs.values()) for h in result.heads]  # every phase (a closed-form phase 2 counts 1)
    kept = [h.val_accuracy for h in result.heads if h.finished]  # the heads a job keeps its models from
    return {"seconds": seconds, "heads": len(result.heads), "best": max(kept),
            "accuracies": accuracies, "max_epochs": max(epochs), "head_epochs": sum(epochs),
            "cut": sum(not h.finished for h in result.heads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="digits,mnist-5k,hpc")
    parser.add_argument("--kinds", default="glai,mlp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--halving", type=int, default=2, help="eta of the halving sweep (0: none)")
    parser.add_argument("--first-rung", type=int, default=None, help="epochs to the first cut "
                        "(default: each kind's patience)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.device}, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start (torch {torch.__version__})")
    run_sweep(load_task("iris"), config(args.device), ONE, Hooks(), kinds=("glai",))  # one-off set-up
    rows: list[dict[str, Any]] = []
    for name in args.tasks.split(","):
        data = load_task(name)
        for kind in args.kinds.split(","):
            for repeat in range(args.repeats):
                one = timed(data, kind, ONE, args.device)  # interleaved: one, eight, eight halved
                many = timed(data, kind, GRID, args.device)
                row = {"task": name, "kind": kind, "repeat": repeat, "one_s": one["seconds"],
                       "k": many["heads"], "k_s": many["seconds"], "ratio": many["seconds"] / one["seconds"],
                       "one_accuracy": one["best"], "k_best_accuracy": many["best"],
                       "k_accuracies": many["accuracies"], "one_epochs": one["max_epochs"],
                       "k_max_epochs": many["max_epochs"], "k_head_epochs": many["head_epochs"]}
                line = (f"{name:10s} {kind:4s} repeat {repeat}: one head {row['one_s']:6.2f} s "
                        f"({row['one_accuracy']:.4f}) | {row['k']} heads {row['k_s']:6.2f} s (best "
                        f"{row['k_best_accuracy']:.4f})  ratio {row['ratio']:.2f}  epochs: one head "
                        f"{row['one_epochs']}, slowest of {row['k']} {row['k_max_epochs']}")
                if args.halving:
                    halving = {"eta": args.halving, "first_rung": args.first_rung}
                    halved = timed(data, kind, {**GRID, "halving": halving}, args.device)
                    row.update({"h_s": halved["seconds"], "h_ratio": halved["seconds"] / one["seconds"],
                                "h_best_accuracy": halved["best"], "h_cut": halved["cut"],
                                "h_head_epochs": halved["head_epochs"]})
                    line += (f" | halving {row['h_s']:6.2f} s (best {row['h_best_accuracy']:.4f}, "
                             f"{row['h_cut']} cut) ratio {row['h_ratio']:.2f}")
                rows.append(row)
                print(line, flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    print(f"(bar: K=8 heads <= {TIME_BAR:.0f}x one head's wall time"
          + (f"; 'halved': the same K heads under successive halving, eta {args.halving}, best of the heads "
             "that finished)" if args.halving else ")"))
    print(f"{'task':10s} {'kind':4s} {'one s':>7s} {'K':>2s} {'K s':>7s} {'ratio':>6s} {'one acc':>8s} "
          f"{'best of K':>9s}  bar"
          + (f" | {'halved s':>8s} {'ratio':>6s} {'best':>7s} {'cut':>4s}  bar" if args.halving else ""))
    for name in args.tasks.split(","):
        for kind in args.kinds.split(","):
            group = [r for r in rows if r["task"] == name and r["kind"] == kind]
            ratio = stat.median(r["ratio"] for r in group)
            line = (f"{name:10s} {kind:4s} {stat.median(r['one_s'] for r in group):7.2f} {group[0]['k']:2d} "
                    f"{stat.median(r['k_s'] for r in group):7.2f} {ratio:6.2f} "
                    f"{stat.median(r['one_accuracy'] for r in group):8.4f} "
                    f"{stat.median(r['k_best_accuracy'] for r in group):9.4f}  "
                    f"{'pass' if ratio <= TIME_BAR else 'FAIL'}")
            if args.halving:
                h_ratio = stat.median(r["h_ratio"] for r in group)
                line += (f" | {stat.median(r['h_s'] for r in group):8.2f} "
                         f"{h_ratio:6.2f} {stat.median(r['h_best_accuracy'] for r in group):7.4f} "
                         f"{stat.median(r['h_cut'] for r in group):4.0f}  "
                         f"{'pass' if h_ratio <= TIME_BAR else 'FAIL'}")
            print(line)
    print("(epochs: both phases' for GLAI, the MLP's own. The slowest head sets the pass's length, "
          "so ratio x one head's epochs / the slowest head's is what the batching costs per epoch)")
    for name in args.tasks.split(","):
        for kind in args.kinds.split(","):
            group = [r for r in rows if r["task"] == name and r["kind"] == kind]
            per_epoch = stat.median(r["ratio"] * r["one_epochs"] / max(1, r["k_max_epochs"]) for r in group)
            print(f"{name:10s} {kind:4s} epochs one head {stat.median(r['one_epochs'] for r in group):.0f}, "
                  f"slowest head {stat.median(r['k_max_epochs'] for r in group):.0f}; "
                  f"per-epoch ratio {per_epoch:.2f}")
    ratios = [r["ratio"] for r in rows]
    print(f"(medians over {args.repeats} repeats; geometric mean of every ratio "
          f"{float(np.exp(np.mean(np.log(ratios)))):.2f}x"
          + (f", with halving {float(np.exp(np.mean(np.log([r['h_ratio'] for r in rows])))):.2f}x"
             if args.halving else "") + ")")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
