"""GLAI on many real tables: GLAI, the parameter-matched MLP, LogisticRegression and MLPClassifier.

    python -m bench.suite                              # every set of bench.suite_data that loads
    python -m bench.suite --sets iris digits --repeats 3 --markdown

Per set: one stratified 60/20/20 split (``bench.suite_data.split``). GLAI and the MLP train with the
library defaults, resolved from the data as a job resolves them (``glai_core.defaults``), on the same
device and data, early-stopped on the validation split; scikit-learn's LogisticRegression and
MLPClassifier (the reference widths, its own early stopping) are fitted on the training split with
standardised inputs. Every accuracy is on the test split.

GLAI and the MLP run ``--repeats`` times each, interleaved (MLP, GLAI, GLAI, MLP, ...), with the same
training seed: the repeats differ only by the machine's noise, and each figure is the median over them.
With ``--vary-seed`` repeat r trains with seed + r (both models, the split unchanged): on sets whose test
split is a few dozen rows one seed moves an accuracy by a row or two, and the medians are then over
training seeds as well as the machine's noise.

The two protocols, both reported:

* **total training time**: wall time of the whole training call, early stopping included, which is what
  a user waits for (GLAI: structure, gate caching and phase 2; the MLP: its epochs);
* **time to target**: seconds, on the phases' own clocks, until validation accuracy first reaches the
  MLP's best minus 0.5 pp (the paper's protocol); the ratio is the MLP's over GLAI's. A run that never
  reaches the target has no ratio and is listed.

Chance is the majority class's share of the test split. On imbalanced sets accuracy cannot show that
S learned anything (every model sits at the majority share), so S's test cross-entropy is printed beside
the class prior's (the training split's class frequencies): below it, S has learned more than the prior.
Nothing else may run on the machine while this runs: the timings are medians of interleaved repeats,
not guards against a busy machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.common import console, describe_device, geometric_mean, pick_device, report
from bench.suite_data import SETS, Table, by_name, split
from glai_core.config import TrainConfig
from glai_core.defaults import adapt
from glai_core.hooks import Hooks
from glai_core.metrics import evaluate
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.pipeline import (
    TARGET_MARGIN,
    architecture_match,
    baseline_phase,
    resolve_precision,
    structural_phase,
    time_to_target,
)
from glai_core.preprocess import Standardizer
from glai_core.solvers import quantitative_phase
from glai_core.train import DeviceSet

OUT_DIR = Path(__file__).resolve().parent / "out"


@dataclass
class Run:
    """One training call of GLAI or the MLP."""

    test_accuracy: float
    val_accuracy: float
    seconds: float  # wall time of the whole call
    histories: list[list[dict[str, float]]]
    extra: dict[str, object] = field(default_factory=dict)


Parts = dict[str, tuple[np.ndarray, np.ndarray]]


def _device_sets(parts: Parts, device: torch.device) -> dict[str, DeviceSet]:
    standardizer = Standardizer.fit(parts["train"][0])
    return {name: DeviceSet(standardizer.apply(torch.from_numpy(x)).to(device),
                            torch.from_numpy(y).to(device)) for name, (x, y) in parts.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mlp(sets: dict[str, DeviceSet], m: int, config: TrainConfig, autocast: torch.dtype | None) -> Run:
    _sync(sets["train"].x.device)
    start = time.perf_counter()
    base = baseline_phase(sets["train"], sets["val"], config.architecture.hidden, m, config.baseline, Hooks(),
                          None, config.seed, autocast)
    _sync(sets["train"].x.device)
    seconds = time.perf_counter() - start
    test = evaluate(base.model, sets["test"].x, sets["test"].y)[1]
    return Run(test, base.best_accuracy, seconds, [base.history], {"epochs": len(base.history)})


def run_glai(sets: dict[str, DeviceSet], m: int, config: TrainConfig, autocast: torch.dtype | None) -> Run:
    train, val, test = sets["train"], sets["val"], sets["test"]
    _sync(train.x.device)
    start = time.perf_counter()
    arch = config.architecture
    match = architecture_match(train.x.shape[1], arch.hidden, m, arch.reduction_factor, len(train))
    s = structural_phase(train, val, match.glai_hidden, m, config.structural, Hooks(), None, config.seed,
                         autocast)
    structure = s.model
    assert isinstance(structure, StructuralMLP)
    structure_loss, structure_test = evaluate(structure, test.x, test.y)  # outside the clock: a copy; tiny
    block = GLAIBlock.from_structure(structure, warm_start=config.quantitative.warm_start)
    q = quantitative_phase(block, train, val, config.quantitative, Hooks(), None, config.seed, autocast)
    _sync(train.x.device)
    seconds = time.perf_counter() - start
    test_acc = evaluate(block, test.x, test.y)[1]
    solver = q.extra.get("auto", {}).get("solver", config.quantitative.solver)
    return Run(test_acc, q.best_accuracy, seconds, [s.history, q.history],
               {"structure_test": structure_test, "structure_loss": structure_loss,
                "structural_epochs": len(s.history), "solver": solver,
                "structure_s": s.seconds, "phase2_s": q.seconds,
                "glai_hidden": match.glai_hidden, "phase2_steps": len(q.history) - 1})


def run_sklearn(parts: Parts, hidden: list[int], seed: int) -> dict[str, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = parts["train"]
    x_test, y_test = parts["test"]
    out: dict[str, float] = {}
    models = {"logreg": LogisticRegression(max_iter=2000),
              "sk_mlp": MLPClassifier(hidden_layer_sizes=tuple(hidden), early_stopping=True,
                                      random_state=seed, max_iter=500)}
    for name, model in models.items():
        pipeline = make_pipeline(StandardScaler(), model)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipeline.fit(x, y)
        out[f"{name}_s"] = time.perf_counter() - start
        out[name] = float((pipeline.predict(x_test) == y_test).mean())
    return out


def prior_loss(y_train: np.ndarray, y_test: np.ndarray, m: int) -> float:
    """Test cross-entropy of predicting the training split's class frequencies (add-one smoothed)."""
    freq = (np.bincount(y_train, minlength=m) + 1) / (len(y_train) + m)
    return float(-np.log(freq[y_test]).mean())


def run_set(table: Table, base: TrainConfig, repeats: int, device: torch.device,
            also_adaptive: bool = False, vary_seed: bool = False) -> dict[str, object]:
    parts = split(table, seed=base.seed)
    sets = _device_sets(parts, device)
    n, d = parts["train"][0].shape
    m = len(table.class_names)
    config, effective = adapt(base, n, d, m)
    autocast = resolve_precision(config.precision, device)
    mlp_runs: list[Run] = []
    glai_runs: list[Run] = []
    for repeat in range(repeats):  # interleaved: MLP, GLAI, GLAI, MLP, MLP, GLAI, ...
        seeded = copy.deepcopy(config)
        seeded.seed = config.seed + (repeat if vary_seed else 0)
        order = [(run_mlp, mlp_runs), (run_glai, glai_runs)]
        for runner, runs in order if repeat % 2 == 0 else order[::-1]:
            runs.append(runner(sets, m, seeded, autocast))
    sk = run_sklearn(parts, config.architecture.hidden, base.seed)
    adaptive: dict[str, object] = {}
    if also_adaptive:  # one run, not interleaved: sized by the data, not parameter-matched
        wide = copy.deepcopy(config)
        wide.architecture.reduction_factor = "adaptive"
        run = run_glai(sets, m, wide, autocast)
        adaptive = {"adaptive": run.test_accuracy, "adaptive_s": run.seconds,
                    "adaptive_hidden": run.extra["glai_hidden"]}
    ratios, glai_tts, mlp_tts = [], [], []
    for mlp, glai in zip(mlp_runs, glai_runs, strict=True):
        target = mlp.val_accuracy - TARGET_MARGIN
        mlp_tt, glai_tt = time_to_target(mlp.histories, target), time_to_target(glai.histories, target)
        mlp_tts.append(mlp_tt)
        glai_tts.append(glai_tt)
        ratios.append(None if glai_tt is None or mlp_tt is None else mlp_tt / glai_tt)
    reached = [r for r in ratios if r is not None]
    y_test = parts["test"][1]
    first = glai_runs[0]
    return {
        "n": n, "d": d, "m": m, "chance": float(np.bincount(y_test).max() / len(y_test)),
        "glai": statistics.median(r.test_accuracy for r in glai_runs),
        "mlp": statistics.median(r.test_accuracy for r in mlp_runs),
        "structure": statistics.median(float(r.extra["structure_test"]) for r in glai_runs),  # type: ignore[arg-type]
        "structure_loss": statistics.median(float(r.extra["structure_loss"]) for r in glai_runs),  # type: ignore[arg-type]
        "prior_loss": prior_loss(parts["train"][1], y_test, m), "vary_seed": vary_seed,
        "glai_val": first.val_accuracy, "mlp_val": mlp_runs[0].val_accuracy,
        "glai_s": statistics.median(r.seconds for r in glai_runs),
        "mlp_s": statistics.median(r.seconds for r in mlp_runs),
        "tt_ratio": statistics.median(reached) if len(reached) == len(ratios) else None,
        "tt_reached": f"{len(reached)}/{len(ratios)}",
        "glai_tt": statistics.median(t for t in glai_tts if t is not None) if reached else None,
        "mlp_tt": statistics.median(t for t in mlp_tts if t is not None) if reached else None,
        "solver": first.extra["solver"], "structural_epochs": first.extra["structural_epochs"],
        "structure_s": statistics.median(float(r.extra["structure_s"]) for r in glai_runs),  # type: ignore[arg-type]
        "phase2_s": statistics.median(float(r.extra["phase2_s"]) for r in glai_runs),  # type: ignore[arg-type]
        "mlp_epochs": mlp_runs[0].extra["epochs"], "glai_hidden": first.extra["glai_hidden"],
        "batch": config.structural.batch_size,
        **sk, **adaptive, "effective": effective,
    }


COLUMNS = ["set", "N train", "d", "m", "chance", "LogReg", "sk MLP", "MLP", "GLAI", "S", "GLAI-MLP pp",
           "GLAI-LogReg pp", "MLP s", "GLAI s", "total time ratio", "time-to-target ratio", "solver",
           "S epochs", "MLP epochs", "LogReg s", "sk MLP s", "S test loss", "prior loss"]


def row(name: str, r: dict) -> list[object]:
    return [name, r["n"], r["d"], r["m"], r["chance"], r["logreg"], r["sk_mlp"], r["mlp"], r["glai"],
            r["structure"], f"{100 * (r['glai'] - r['mlp']):+.2f}", f"{100 * (r['glai'] - r['logreg']):+.2f}",
            r["mlp_s"], r["glai_s"], r["mlp_s"] / r["glai_s"],
            r["tt_ratio"] if r["tt_ratio"] is not None else f"never ({r['tt_reached']})", r["solver"],
            r["structural_epochs"], r["mlp_epochs"], r["logreg_s"], r["sk_mlp_s"], r["structure_loss"],
            r["prior_loss"]]


def bars(results: dict[str, dict]) -> list[str]:
    """The issue's bars over the suite, each as one line."""
    values = list(results.values())
    deltas = [r["glai"] - r["mlp"] for r in values]
    near_lr = sum(r["glai"] >= r["logreg"] - 0.01 - 1e-9 for r in values)
    above = sum(r["structure"] > r["chance"] for r in values)
    below_prior = sum(r["structure_loss"] < r["prior_loss"] for r in values)
    faster = sum(r["glai_s"] <= r["mlp_s"] for r in values)
    tt = [r["tt_ratio"] for r in values if r["tt_ratio"] is not None]
    total = [r["mlp_s"] / r["glai_s"] for r in values]
    extra = []
    if values and "adaptive" in values[0]:
        wide = 100 * statistics.median(r["adaptive"] - r["mlp"] for r in values)
        near = sum(r["adaptive"] >= r["logreg"] - 0.01 for r in values)
        extra.append(f"adaptive width (not parameter-matched): median GLAI - MLP {wide:+.2f} pp, "
                     f"within 1 pp of LogReg on {near}/{len(values)}")
    return extra + [
        f"sets: {len(values)}",
        f"median GLAI - MLP accuracy: {100 * statistics.median(deltas):+.2f} pp (bar >= -0.30); "
        f"mean {100 * statistics.mean(deltas):+.2f} pp",
        f"median accuracy: GLAI {statistics.median(r['glai'] for r in values):.4f}, "
        f"MLP {statistics.median(r['mlp'] for r in values):.4f}, "
        f"LogReg {statistics.median(r['logreg'] for r in values):.4f}, "
        f"sk MLP {statistics.median(r['sk_mlp'] for r in values):.4f}",
        f"GLAI within 1 pp of LogisticRegression (or better): {near_lr}/{len(values)} "
        f"({100 * near_lr / len(values):.0f}%; bar >= 90%)",
        f"structure above chance: {above}/{len(values)} (bar: all); S's test cross-entropy below the class "
        f"prior's: {below_prior}/{len(values)}",
        f"GLAI total training time <= MLP's: {faster}/{len(values)} ({100 * faster / len(values):.0f}%; "
        f"bar >= 67%); geometric mean total-time ratio (MLP / GLAI) {geometric_mean(total):.2f}x",
        f"time-to-target ratio: geometric mean {geometric_mean(tt) or 0:.2f}x over the {len(tt)} sets that "
        f"reached the target in every repeat (bar >= 1.5x); median {statistics.median(tt) if tt else 0:.2f}x",
        f"median wall time per set: GLAI {statistics.median(r['glai_s'] for r in values):.2f} s, "
        f"MLP {statistics.median(r['mlp_s'] for r in values):.2f} s, "
        f"LogReg {statistics.median(r['logreg_s'] for r in values):.2f} s, "
        f"sk MLP {statistics.median(r['sk_mlp_s'] for r in values):.2f} s",
    ]


def apply_override(config: TrainConfig, text: str) -> None:
    """``section.field=value`` (value parsed as JSON when it can be, else kept as a string)."""
    path, _, raw = text.partition("=")
    section, _, name = path.partition(".")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    target = getattr(config, section)
    if not hasattr(target, name):
        raise SystemExit(f"unknown setting {path!r}")
    setattr(target, name, value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=[s.name for s in SETS], choices=[s.name for s in SETS])
    parser.add_argument("--skip", nargs="+", default=[], choices=[s.name for s in SETS])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vary-seed", action="store_true",
                        help="repeat r trains with seed + r (medians over training seeds too)")
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help="reference widths (default: the library's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a library default, e.g. quantitative.solver=lbfgs "
                             "structural.threshold=0.01")
    parser.add_argument("--adaptive", action="store_true",
                        help="also train GLAI once with reduction_factor='adaptive' (not parameter-matched)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-set results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    base = TrainConfig(precision=args.precision)
    base.pruning.enabled = False
    if args.hidden:
        base.architecture.hidden = list(args.hidden)
    for override in args.overrides:
        apply_override(base, override)
    catalogue = by_name()
    results: dict[str, dict] = {}
    unavailable: dict[str, str] = {}
    started = time.perf_counter()
    for name in args.sets:
        if name in args.skip:
            continue
        try:
            table = catalogue[name].load()
        except Exception as exc:  # noqa: BLE001 -- an optional source (feature cache, Debian data) is missing
            unavailable[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
            console.print(f"[yellow]{name}: unavailable ({unavailable[name]})")
            continue
        results[name] = run_set(table, base, args.repeats, device, args.adaptive, args.vary_seed)
        r = results[name]
        console.print(f"{name}: GLAI {r['glai']:.4f} MLP {r['mlp']:.4f} LogReg {r['logreg']:.4f} "
                      f"S {r['structure']:.4f} | GLAI {r['glai_s']:.2f}s MLP {r['mlp_s']:.2f}s "
                      f"tt {r['tt_ratio']} ({r['solver']}, S epochs {r['structural_epochs']})")
    rows = [row(name, r) for name, r in results.items()]
    if args.adaptive:
        adaptive_rows = [[name, r["glai_hidden"], r["adaptive_hidden"], r["mlp"], r["glai"], r["adaptive"],
                          f"{100 * (r['adaptive'] - r['mlp']):+.2f}", r["glai_s"], r["adaptive_s"]]
                         for name, r in results.items()]
        report("GLAI with reduction_factor='adaptive' (not parameter-matched)",
               ["set", "matched widths", "adaptive widths", "MLP", "GLAI matched", "GLAI adaptive",
                "adaptive - MLP pp", "matched s", "adaptive s"], adaptive_rows, None, args.markdown)
    seeds = f"training seeds {base.seed}..{base.seed + args.repeats - 1}" if args.vary_seed else "one seed"
    caption = (f"{describe_device(device)}; {args.repeats} interleaved repeats of GLAI and the MLP "
               f"({seeds}, medians); "
               f"{time.perf_counter() - started:.0f} s for the suite. Accuracies on the test split.")
    report("GLAI suite", COLUMNS, rows, caption, args.markdown)
    for line in bars(results):
        console.print(line)
    for name, why in unavailable.items():
        console.print(f"unavailable: {name}: {why}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "unavailable": unavailable,
                                         "device": describe_device(device)}, indent=1, default=str))


if __name__ == "__main__":
    main()
