"""GLAI against the parameter-matched MLP, trained by the same loop on the same device, per task.

    python -m bench.glai_vs_mlp                       # every task that loads offline, full size
    python -m bench.glai_vs_mlp --quick               # subsampled frozen-feature/pixel tasks (~2-3 min)
    python -m bench.glai_vs_mlp --tasks mnist-5k mnist1d --solvers auto adam ridge+adam

Per task: the MLP baseline (reference widths, early-stopped on validation), GLAI phase 1 once (the
structural MLP S with the stop rule), then phase 2 from the same S with each solver (``auto``, the
default, resolves to one of the others by its cost model; a solver whose closed form would cost more than
``--max-closed-form-epochs`` Adam epochs, or needs CG, is reported as skipped), and the pruning sweep on
the default solver's block. Time to target: target = MLP best validation accuracy - 0.5 pp; GLAI's clock
runs over phase 1 then phase 2 (gate caching, closed-form solves and every evaluation included), the
MLP's over its epochs. Speedup = MLP time / GLAI time. With ``--repeats R`` (default 2) the MLP and
GLAI (``auto``) run R times, alternating, and each keeps its fastest time to target (other solvers run
once). GLAI "meets" the issue's bar on a task when its
accuracy is at least the MLP's - 0.3 pp; the geometric mean of the speedups is printed for the
frozen-feature and pixel tasks (MNIST-1D, where GLAI is expected to fall short, is reported apart).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

import torch

from bench.common import (
    ACCURACY_MARGIN,
    TASKS,
    cache_name,
    console,
    describe_device,
    geometric_mean,
    mlp_then_glai,
    pick_device,
    report,
    to_device,
)
from glai_core.config import TrainConfig
from glai_core.cost_model import choose_phase2, phase2_seconds
from glai_core.data import DataError
from glai_core.defaults import adapt
from glai_core.hooks import Hooks
from glai_core.model import GLAIBlock, match_parameters
from glai_core.pipeline import (
    TARGET_MARGIN,
    baseline_phase,
    pruning_phase,
    resolve_precision,
    structural_phase,
    time_to_target,
)
from glai_core.solvers import quantitative_phase
from glai_core.train import DeviceSet

COLUMNS = ["task", "n / d / m", "MLP acc", "MLP epochs (best/run)", "MLP time-to-target s", "solver",
           "GLAI acc", "acc - MLP (pp)", "phase-1 epochs", "phase-2 steps", "GLAI time-to-target s",
           "speedup", "pruned 50/75/90", "verdict"]


def _closed_form_epochs(n: int, n_val: int, d: int, hidden: list[int], m: int, config: TrainConfig,
                        device: str) -> float:
    """The exact closed form's estimated cost in Adam epochs (``solvers.phase2_seconds``)."""
    q = config.quantitative
    costs = phase2_seconds(n, n_val, d, hidden, m, q, device)
    return costs["ridge"] / (costs["adam"] / max(1, q.epochs or 1))


def run_task(name: str, args: argparse.Namespace, config: TrainConfig) -> list[list[object]]:
    device = pick_device(args.device)
    task = TASKS[name]
    data = task.load(args.quick, args.seed)
    train, val, _, m = to_device(data, device)
    d = train.x.shape[1]
    config, _ = adapt(config, len(train), d, m)  # the settings a job would choose for this data
    autocast = resolve_precision(config.precision, device)
    match = match_parameters(d, config.architecture.hidden, m)
    label = name if cache_name(name) is None else f"{name} ({cache_name(name)})"
    console.print(f"[bold]{label}[/]: n={len(train)}, val={len(val)}, d={d}, m={m}, "
                  f"MLP {match.reference_hidden} ({match.mlp_params} params), GLAI {match.glai_hidden} "
                  f"({match.glai_trainable_params} trainable)")

    hooks = Hooks()
    base = baseline_phase(train, val, config.architecture.hidden, m, config.baseline, hooks, None, args.seed,
                          autocast)
    target = base.best_accuracy - TARGET_MARGIN
    base_tt = time_to_target([base.history], target)
    console.print(f"  MLP: best {base.best_accuracy:.4f} at epoch {base.best_step}/{len(base.history)}, "
                  f"{base.seconds:.1f} s, target {target:.4f} reached after {base_tt:.2f} s")
    s = structural_phase(train, val, match.glai_hidden, m, config.structural, hooks, None, args.seed,
                         autocast)
    console.print(f"  phase 1: {len(s.history)} epochs ({s.stopped_by}), S accuracy "
                  f"{s.history[-1]['val_accuracy']:.4f}, {s.seconds:.2f} s")

    results: dict[str, tuple[object, float | None, GLAIBlock] | str] = {}
    closed_epochs = _closed_form_epochs(len(train), len(val), d, match.glai_hidden, m, config, device.type)
    auto_resolved = choose_phase2(len(train), len(val), d, match.glai_hidden, m, config.quantitative,
                                  device.type)[0]
    for solver in args.solvers:
        if solver == auto_resolved and isinstance(results.get("auto"), tuple):
            results[solver] = results["auto"]  # the same run: auto chose this solver
            continue
        if solver.startswith("ridge") and closed_epochs > args.max_closed_form_epochs:
            results[solver] = (f"skipped: closed form ~{closed_epochs:.0f} Adam epochs"
                               if closed_epochs != float("inf") else "skipped: needs CG")
            continue
        cfg = replace(config.quantitative, solver=solver)
        block = GLAIBlock.from_structure(copy.deepcopy(s.model), warm_start=cfg.warm_start)
        q = quantitative_phase(block, train, val, cfg, hooks, None, args.seed, autocast)
        glai_tt = time_to_target([s.history, q.history], target)
        resolved = q.extra.get("auto", {}).get("solver", solver)
        shown = f"auto -> {resolved}" if solver == "auto" else solver
        console.print(f"  {shown}: best {q.best_accuracy:.4f}, {len(q.history)} steps, {q.seconds:.2f} s, "
                      f"time to target {glai_tt}")
        results[solver] = (q, glai_tt, block)

    if args.repeats > 1 and isinstance(results.get("auto"), tuple):
        base_tt, auto_tt = _fastest_of_repeats(args, train, val, m, config, autocast, base_tt, results)
        console.print(f"  fastest of {args.repeats} alternating runs: MLP {base_tt}, GLAI (auto) {auto_tt}")

    pruned = "-"
    default = results.get("auto")
    if args.prune and isinstance(default, tuple):
        started = time.perf_counter()
        levels = pruning_phase(default[2], train, val, config.pruning, config.quantitative.batch_size, hooks,
                               args.seed, autocast)
        pruned = " / ".join(f"{r.accuracy:.3f}" for r in levels)
        console.print(f"  pruned {pruned} ({time.perf_counter() - started:.1f} s)")

    rows: list[list[object]] = []
    for solver, outcome in results.items():
        common = [name, f"{len(train)} / {d} / {m}", base.best_accuracy,
                  f"{base.best_step}/{len(base.history)}", base_tt]
        if isinstance(outcome, str):
            rows.append([*common, solver, None, None, len(s.history), None, None, None, "-", outcome])
            continue
        q, glai_tt, _ = outcome
        resolved = q.extra.get("auto", {}).get("solver", solver)  # type: ignore[attr-defined]
        shown = f"auto -> {resolved}" if solver == "auto" else solver
        if solver != "auto" and solver == auto_resolved:
            shown = f"{solver} (= auto)"
        acc = q.best_accuracy  # type: ignore[attr-defined]
        speedup = base_tt / glai_tt if glai_tt and base_tt else None
        verdict = _verdict(acc, base.best_accuracy, speedup, name)
        rows.append([*common, shown, acc, 100 * (acc - base.best_accuracy), len(s.history),
                     len(q.history) - 1, glai_tt, speedup,  # type: ignore[attr-defined]
                     pruned if solver == "auto" else "-", verdict])
    return rows


def _fastest_of_repeats(args: argparse.Namespace, train: DeviceSet, val: DeviceSet, m: int,
                        config: TrainConfig, autocast: torch.dtype | None, base_tt: float | None,
                        results: dict) -> tuple[float | None, float | None]:
    """Rerun the MLP and GLAI (phase 1 + ``auto`` phase 2) ``repeats - 1`` more times, alternating, and keep
    each one's fastest time to target. Training is deterministic, so only the clock differs between runs;
    on a shared machine other jobs only ever add time, so the minimum is the least noisy estimate."""
    q, auto_tt, block = results["auto"]
    for _ in range(args.repeats - 1):
        run = mlp_then_glai(train, val, m, config, args.seed, autocast)
        base_tt = run["mlp_tt"] if base_tt is None else min(base_tt, run["mlp_tt"] or base_tt)
        auto_tt = run["glai_tt"] if auto_tt is None else min(auto_tt, run["glai_tt"] or auto_tt)
    results["auto"] = (q, auto_tt, block)
    for solver, outcome in results.items():  # the explicit solver that auto resolved to is the same run
        if isinstance(outcome, tuple) and outcome[0] is q:
            results[solver] = (q, auto_tt, block)
    return base_tt, auto_tt


def _verdict(acc: float, mlp: float, speedup: float | None, task: str) -> str:
    notes = []
    if acc < mlp - ACCURACY_MARGIN:
        notes.append(f"falls short: accuracy {100 * (acc - mlp):+.1f} pp")
    if speedup is None:
        notes.append("never reached the target")
    elif speedup < 1:
        notes.append("slower than the MLP")
    if not notes:
        return "meets accuracy" + (" and >= 3x" if speedup is not None and speedup >= 3 else "")
    return "; ".join(notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--solvers", nargs="+", default=["auto", "adam", "ridge+adam"],
                        choices=["auto", "adam", "ridge", "ridge+adam", "lbfgs", "ridge+lbfgs"])
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="reference MLP widths")
    parser.add_argument("--max-closed-form-epochs", type=float, default=40.0,
                        help="skip explicit ridge solvers costing more than this many Adam epochs")
    parser.add_argument("--phase2-lr", type=float, default=None, help="override quantitative.lr")
    parser.add_argument("--input-rank", type=int, default=None,
                        help="override quantitative.input_rank (0: off)")
    parser.add_argument("--phase2-schedule", choices=["constant", "linear"], default=None)
    parser.add_argument("--min-structural-epochs", type=int, default=None,
                        help="structural.min_epochs, the stop rule's floor (default: chosen from the data)")
    parser.add_argument("--no-prune", dest="prune", action="store_false")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="subsample the large tasks (8-10k rows)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternating runs of the MLP and GLAI (auto); the fastest time to target counts")
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if "auto" not in args.solvers:
        args.solvers = ["auto", *args.solvers]
    config = TrainConfig()
    config.precision = args.precision
    if args.hidden:
        config.architecture.hidden = args.hidden
    if args.phase2_schedule is not None:
        config.quantitative.schedule = args.phase2_schedule
    if args.min_structural_epochs is not None:
        config.structural.min_epochs = args.min_structural_epochs
    if args.input_rank is not None:
        config.quantitative.input_rank = args.input_rank
    if args.phase2_lr is not None:
        config.quantitative.lr = args.phase2_lr
    device = pick_device(args.device)
    title = f"GLAI vs MLP ({'quick' if args.quick else 'full'}), {describe_device(device)}"
    console.print(title)
    started = time.perf_counter()
    rows: list[list[object]] = []
    for name in args.tasks:
        try:
            rows += run_task(name, args, config)
        except DataError as exc:
            console.print(f"[yellow]{name}: unavailable ({exc.message})[/]")
            rows.append([name, "-", None, "-", None, "-", None, None, None, None, None, None, "-",
                         f"unavailable: {exc.message}"])
    auto = {r[0]: r[11] for r in rows if str(r[5]).startswith("auto")}
    main_tasks = [t for t in auto if TASKS[t].kind != "signal" and auto[t] is not None]
    missed = [t for t in auto if auto[t] is None]
    gm = geometric_mean([auto[t] for t in main_tasks])  # type: ignore[misc]
    gm_text = "-" if gm is None else f"{gm:.2f}x"
    caption = (f"geometric-mean speedup (auto) over the tasks that reached the target "
               f"({', '.join(main_tasks)}): {gm_text}; never reached it (no speedup to average): "
               f"{', '.join(missed) or 'none'}; "
               f"{time.perf_counter() - started:.0f} s in all; {describe_device(device)} at the end")
    report(title, COLUMNS, rows, caption, args.markdown)


if __name__ == "__main__":
    main()
