"""Loop efficiency: the project's training loop against the plain loop (``bench/plain_loop.py``), per epoch.

    python -m bench.loop_efficiency                 # Fashion-MNIST pixels, 60k, CPU or the GPU if present
    python -m bench.loop_efficiency --quick         # 12k samples, fewer epochs (about a minute on 2 cores)
    python -m bench.loop_efficiency --device cpu --threads 2 --precision bf16

Three workloads, each trained for the same number of epochs from the same initial weights by both loops:
the parameter-matched MLP baseline, GLAI phase 1 (the narrow structural MLP S) and GLAI phase 2 (the path
block on S's frozen gates; the plain loop recomputes the gates with S in every step, ours caches them
once). Seconds per epoch include each loop's own evaluation; the table shows the fastest of epochs 2..E
(the first pays one-off warm-up; the fastest epoch over ``--repeats`` alternating runs, since on a shared
machine other jobs only add time), the speedup, and validation accuracy after E epochs of both loops: the
same accuracy within noise is the condition for a speedup to count.

The "GEMM floor" is what the epoch's matrix products alone cost on this device: every forward, weight-
gradient and input-gradient product of every step at the batch size, plus the evaluation's forward,
each timed in isolation into preallocated outputs (on a GPU: among 50 queued copies of itself, since a
product timed alone there is mostly launch latency). No loop at the same arithmetic and precision can
beat it, so "plain / floor" is the largest speedup any loop could show over the plain one.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from bench.common import TASKS, console, describe_device, pick_device, report, sync, to_device
from bench.plain_loop import plain_mlp, plain_train
from glai_core.hooks import Hooks
from glai_core.model import GLAIBlock, StructuralMLP, match_parameters
from glai_core.pipeline import resolve_precision
from glai_core.train import Best, DeviceSet, FitSettings, evaluate_point, fit

COLUMNS = ["workload", "params", "batch (plain / ours)", "plain s/epoch", "ours s/epoch", "speedup",
           "GEMM floor s/epoch", "plain / floor", "ours / floor", "plain val acc", "ours val acc"]


def mlp_gemms(widths: list[int], batch: int) -> list[tuple[int, int, int]]:
    """(rows, inner, cols) of one training step's products for an MLP with these layer widths: each
    layer's forward and weight gradient, and the input gradient of every layer but the first."""
    shapes = []
    for index, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        shapes += [(batch, a, b), (b, batch, a)]
        if index > 0:
            shapes.append((batch, b, a))
    return shapes


def gemm_seconds(shapes: list[tuple[int, int, int]], device: torch.device, dtype: torch.dtype,
                 repeats: int = 20) -> float:
    """Sum over the products of each one's fastest of ``repeats`` timings into a preallocated output.

    The per-product minimum is the least noisy estimate on a shared machine (other jobs only add time)
    and, if anything, is lower than what the same products cost back to back inside a step: a floor.
    """
    total = 0.0
    for rows, inner, cols in shapes:
        a = torch.randn(rows, inner, device=device, dtype=dtype)
        b = torch.randn(inner, cols, device=device, dtype=dtype)
        out = torch.empty(rows, cols, device=device, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up: BLAS dispatch and caches
        if device.type == "cuda":
            total += _gpu_gemm_seconds(a, b, out)
            continue
        best = math.inf
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            sync(device)
            best = min(best, time.perf_counter() - start)
        total += best
    return total


def _gpu_gemm_seconds(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, back_to_back: int = 50,
                      trials: int = 5) -> float:
    """On a GPU a product timed alone is mostly launch latency and synchronisation, which a loop whose
    kernels are queued (or replayed from a graph) does not pay per product: the floor there is the time
    of one product among ``back_to_back`` queued ones (CUDA events), the best of ``trials``."""
    best = math.inf
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(back_to_back):
            torch.mm(a, b, out=out)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000 / back_to_back)
    return best


def gemm_floor(step_shapes: list[tuple[int, int, int]], eval_shapes: list[tuple[int, int, int]], n: int,
               batch: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per epoch of the products alone: ceil(n / batch) steps in the training dtype plus one
    evaluation forward in float32."""
    return (math.ceil(n / batch) * gemm_seconds(step_shapes, device, dtype)
            + gemm_seconds(eval_shapes, device, torch.float32))


def _typical_epoch(seconds: list[float]) -> float:
    """Fastest epoch after the first (warm-up): on a shared machine other jobs only ever add time, so the
    minimum over epochs and repeats is the least noisy estimate of what the loop itself costs."""
    per_epoch = seconds[1:] if len(seconds) > 1 else seconds
    return min(per_epoch)


def _ours(model: torch.nn.Module, train: DeviceSet, val: DeviceSet, epochs: int, lr: float, batch: int,
          precision: str, seed: int, cuda_graphs: bool = True) -> tuple[list[float], float]:
    autocast = resolve_precision(precision, train.x.device)
    best = Best()
    start = evaluate_point(model, None, val)
    best.take(model, 0, start["val_accuracy"], start["val_loss"])
    settings = FitSettings(epochs=epochs, lr=lr, batch_size=batch, seed=seed, keep_best=False,
                           autocast=autocast, cuda_graphs=cuda_graphs)
    result = fit(model, train, val, settings, Hooks(), "bench", best=best)
    times = [h["seconds"] for h in result.history]
    per_epoch = [b - a for a, b in zip([0.0, *times[:-1]], times, strict=True)]
    return per_epoch, result.history[-1]["val_accuracy"]


def _plain(model: torch.nn.Module, train: DeviceSet, val: DeviceSet, epochs: int, lr: float,
           seed: int) -> tuple[list[float], float]:
    history = plain_train(model, train.x, train.y, val.x, val.y, epochs, lr=lr, seed=seed)
    return [h["seconds"] for h in history], history[-1]["val_accuracy"]


def _same_weights(plain: torch.nn.Module, ours: StructuralMLP) -> StructuralMLP:
    """Both loops start from identical weights."""
    linears = [layer for layer in plain.modules() if isinstance(layer, torch.nn.Linear)]
    for source, target in zip(linears, ours.layers, strict=True):
        target.load_state_dict(source.state_dict())
    return ours


def run(args: argparse.Namespace) -> list[list[object]]:
    device = pick_device(args.device)
    data = TASKS[args.task].load(args.quick, args.seed)
    train, val, _, m = to_device(data, device)
    d = train.x.shape[1]
    match = match_parameters(d, args.hidden, m)
    rows: list[list[object]] = []
    epochs = args.epochs or (3 if args.quick else 5)

    def compare(name: str, params: int, plain_model: torch.nn.Module, our_model: torch.nn.Module,
                our_train: DeviceSet, our_val: DeviceSet, lr: float, batch: int, floor: float) -> None:
        plain_s: list[float] = []
        ours_s: list[float] = []
        for _ in range(args.repeats):  # alternate the loops so that load drifts hit both alike
            seconds, plain_acc = _plain(copy.deepcopy(plain_model), train, val, epochs, lr, args.seed)
            plain_s += seconds[1:]
            seconds, ours_acc = _ours(copy.deepcopy(our_model), our_train, our_val, epochs, lr, batch,
                                      args.precision, args.seed, args.cuda_graphs)
            ours_s += seconds[1:]
        p, o = _typical_epoch([0.0, *plain_s]), _typical_epoch([0.0, *ours_s])
        rows.append([name, params, f"512 / {batch}", p, o, f"{p / o:.2f}x", floor, f"{p / floor:.2f}x",
                     f"{o / floor:.2f}x", plain_acc, ours_acc])
        console.print(f"  {name}: plain {p:.3f} s/epoch, ours {o:.3f} s/epoch ({p / o:.2f}x); "
                      f"GEMM floor {floor:.3f} s/epoch")

    n, n_val = len(train), len(val)
    dtype = resolve_precision(args.precision, device) or torch.float32

    def mlp_floor(hidden: list[int]) -> float:
        widths = [d, *hidden, m]
        evaluation = [(n_val, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        return gemm_floor(mlp_gemms(widths, 512), evaluation, n, 512, device, dtype)

    # the MLP baseline
    torch.manual_seed(args.seed)
    mlp = plain_mlp(d, args.hidden, m).to(device)
    ours = _same_weights(mlp, StructuralMLP(d, args.hidden, m).to(device))
    compare("MLP baseline", match.mlp_params, mlp, ours, train, val, args.lr, args.batch_size,
            mlp_floor(args.hidden))

    # GLAI phase 1: the narrow structural MLP
    torch.manual_seed(args.seed + 1)
    s_plain = plain_mlp(d, match.glai_hidden, m).to(device)
    s_ours = _same_weights(s_plain, StructuralMLP(d, match.glai_hidden, m).to(device))
    compare("GLAI phase 1 (S)", match.structure_params, s_plain, s_ours, train, val, args.lr,
            args.batch_size, mlp_floor(match.glai_hidden))

    # GLAI phase 2: path weights on S's frozen gates (S after its phase-1 epochs above)
    structure = copy.deepcopy(s_ours)
    block_plain = GLAIBlock.from_structure(copy.deepcopy(structure))
    block_ours = GLAIBlock.from_structure(copy.deepcopy(structure))
    g_train, g_val = train.with_gates(block_ours.structure), val.with_gates(block_ours.structure)
    # the path contraction and its Theta gradient (the plain loop also runs S's forward for the gates)
    paths = match.glai_trainable_params - m
    outputs = paths // (d + 1)
    floor = gemm_floor([(512, d + 1, outputs), (outputs, 512, d + 1)], [(n_val, d + 1, outputs)], n, 512,
                       device, dtype)
    compare("GLAI phase 2 (Theta)", match.glai_trainable_params, block_plain, block_ours, g_train, g_val,
            args.phase2_lr, args.batch_size, floor)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="fashion-mnist", choices=sorted(TASKS))
    parser.add_argument("--hidden", type=int, nargs="+", default=[256])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=512, help="our loop's batch (the plain loop: 512)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--phase2-lr", type=float, default=3e-4)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                        help="our loop without whole-epoch CUDA graphs (to attribute the speedup)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of both loops")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    graphs = "" if device.type != "cuda" else (", CUDA graphs" if args.cuda_graphs else ", no CUDA graphs")
    title = (f"loop efficiency: {args.task}, hidden {args.hidden}, {args.precision}{graphs}, "
             f"{describe_device(device)}")
    console.print(title)
    rows = run(args)
    caption = (f"precision {args.precision} -> {resolve_precision(args.precision, device)}; "
               f"{describe_device(device)} at the end")
    report(title, COLUMNS, rows, caption, args.markdown)


if __name__ == "__main__":
    main()
