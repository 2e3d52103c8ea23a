"""One training loop for the structural phase, the MLP baseline and first-order GLAI training.

Small heads are dominated by launch, allocation and synchronisation overhead, not arithmetic, so the
loop: keeps the whole split on the device, shuffles with ``torch.randperm(generator=...)``, gathers each
batch with ``index_select`` into a buffer reused across steps (no allocation per step), takes the
hand-written forward/backward of ``glai_core.steps`` where it applies, uses fused Adam (one kernel per
parameter on CUDA and on CPU), accumulates the training loss on the device and synchronises with the
host once per epoch (together with the batched evaluation). On CUDA, with the hand-written step, an
epoch's full batches are one CUDA graph launch (``glai_core.graphs``). ``hooks.should_stop``
is polled at most every ``poll_seconds`` inside an epoch and after every epoch; the checkpoint written at
the end of an epoch (every epoch, or every ``hooks.checkpoint_interval_s``) is what a resume continues
from, so a mid-epoch cancel loses that epoch and any finished since the last checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from glai_core.checkpoint import PhaseState, load_checkpoint, load_optimizer, save_checkpoint
from glai_core.graphs import EpochGraph
from glai_core.hooks import Cancelled, Event, Hooks
from glai_core.metrics import GateCache, evaluate_sums
from glai_core.optim import LeanAdam
from glai_core.steps import HandWrittenStep, Step, make_step

EVAL_BATCH = 8192
LOW_COPY_MAX_BYTES = 256 * 1024**2  # largest bf16 copy of the training rows a CPU phase makes


@dataclass
class DeviceSet:
    """One split resident on the training device; ``gates`` caches a frozen structure's gates."""

    x: Tensor
    y: Tensor
    gates: GateCache | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def with_gates(self, structure: nn.Module) -> DeviceSet:
        return DeviceSet(self.x, self.y, GateCache.build(structure, self.x))


@dataclass
class FitSettings:
    epochs: int  # last step of the phase (steps already done by a warm start count towards it)
    lr: float
    batch_size: int
    weight_decay: float = 0.0
    patience: int | None = None  # None: run all epochs; else stop after that many without improvement
    # restore the best-validation weights at the end; "patience": only when patience ended the phase
    keep_best: bool | str = True
    seed: int = 0
    poll_seconds: float = 1.0
    schedule: str = "constant"  # or "linear": lr decays per epoch to 0 at ``epochs`` (convex phase 2)
    first_step: int = 0  # steps of the phase before the loop (warm start, closed-form solve)
    autocast: torch.dtype | None = None  # e.g. torch.bfloat16: training forward under autocast
    # Convex phase 2: an epoch that improves neither validation accuracy nor loss took too large steps,
    # so the weights go back to the best point and the learning rate is halved (kept in state.extra).
    backtrack: bool = False
    cuda_graphs: bool = True  # replay each epoch's full batches as one CUDA graph where it applies

    def lr_at(self, step: int) -> float:
        """Learning rate of epoch ``step``; a pure function of the step, so resuming reproduces it."""
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.epochs - self.first_step)
        return self.lr * max(0.0, (self.epochs - step + 1) / span)


@dataclass
class Best:
    """Best validation point so far: weights (device copies) and scores."""

    step: int = -1
    accuracy: float = float("-inf")
    loss: float = float("inf")
    weights: dict[str, Tensor] | None = None

    def improves(self, accuracy: float, loss: float) -> bool:
        return accuracy > self.accuracy or (accuracy == self.accuracy and loss < self.loss)

    def take(self, model: nn.Module, step: int, accuracy: float, loss: float) -> None:
        self.step, self.accuracy, self.loss = step, accuracy, loss
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, float]]
    best_step: int
    best_accuracy: float
    stopped_by: str
    seconds: float
    resumed: bool = False  # continued from a checkpoint
    skipped: bool = False  # reloaded an already finished phase: nothing ran
    extra: dict = field(default_factory=dict)
    graph_captures: int = 0  # CUDA graphs captured (glai_core.graphs): one per phase
    graph_replays: int = 0  # epochs whose full batches ran as one graph launch


EpochMetrics = Callable[[nn.Module], dict[str, float]]
StopRule = Callable[[list[dict[str, float]]], str | None]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0) -> LeanAdam:
    """Fused Adam (one pass over each parameter's memory per step instead of a dozen: 2.7x faster steps
    than foreach on CPU for the MLP baseline's 203k parameters), called without its per-step Python."""
    params = [p for p in model.parameters() if p.requires_grad]
    return LeanAdam(params, lr=lr, weight_decay=weight_decay)


class BatchGather:
    """Per-step row gathers into buffers reused across steps.

    ``x[index]`` allocates a fresh batch every step, and on CPU a buffer of a few MB comes straight from
    the kernel, page faults included; ``index_select(..., out=buffer)`` into memory kept for the whole
    epoch measured 2.8x faster for Fashion-MNIST batches. Safe because a step's backward has finished
    before the next step overwrites the buffer. Host-resident splits (``streaming.HostRows``) gather
    themselves.
    """

    def __init__(self) -> None:
        self.buffers: dict[int, Tensor] = {}

    def __call__(self, slot: int, source: Tensor, index: Tensor) -> Tensor:
        if not isinstance(source, Tensor):
            return source[index]
        n = index.shape[0]
        buffer = self.buffers.get(slot)
        if buffer is None or buffer.shape[0] < n or buffer.dtype != source.dtype:
            buffer = source.new_empty((n, *source.shape[1:]))
            self.buffers[slot] = buffer
        out = buffer[:n]
        torch.index_select(source, 0, index, out=out)
        return out


def _train_epoch(data: DeviceSet, optimizer: torch.optim.Optimizer, step: Step, batch_size: int,
                 generator: torch.Generator, hooks: Hooks, poll_seconds: float, gather: BatchGather,
                 graph: EpochGraph | None = None) -> Tensor:
    """One shuffled pass; returns the summed training loss as a device tensor (no host sync)."""
    step.model.train()
    device = data.y.device
    host_order = torch.randperm(len(data), generator=generator)
    last_poll = time.monotonic()

    def body(order: Tensor, total: Tensor, starts: range, poll: bool = True) -> None:
        nonlocal last_poll
        # Rows kept in host memory (streaming.HostRows) are gathered by the host order: reading a device
        # index back would cost a device sync every step.
        x_order = order if isinstance(data.x, Tensor) else host_order
        for start in starts:
            index = order[start:start + batch_size]
            gates = None if data.gates is None else data.gates.take(index, gather)
            x = gather(-1, data.x, x_order[start:start + batch_size])
            total += step(x, gather(-2, data.y, index), gates, optimizer)
            if poll and time.monotonic() - last_poll > poll_seconds:
                last_poll = time.monotonic()
                if hooks.should_stop():
                    raise Cancelled("stopped during an epoch; resuming repeats it from the last checkpoint")

    if graph is not None:  # polled after the epoch instead (glai_core.graphs)
        return graph.run(host_order, optimizer, lambda order, total, at: body(order, total, at, False))
    total = torch.zeros((), dtype=torch.float32, device=device)
    body(host_order.to(device, non_blocking=True), total, range(0, len(data), batch_size))
    return total


def evaluate_point(model: nn.Module, train: DeviceSet | None, val: DeviceSet,
                   train_loss_sum: Tensor | None = None) -> dict[str, float]:
    """train_loss, val_loss, val_accuracy with one sync; train loss by a full pass when not given."""
    val_sums = evaluate_sums(model, val.x, val.y, EVAL_BATCH, val.gates)
    if train_loss_sum is None and train is not None:
        train_loss_sum = evaluate_sums(model, train.x, train.y, EVAL_BATCH, train.gates)[0]
    parts = [val_sums, (train_loss_sum if train_loss_sum is not None
                        else torch.tensor(float("nan"), device=val.x.device)).reshape(1).double()]
    loss, correct, n, train_sum = torch.cat(parts).tolist()
    n_train = len(train) if train is not None else 1
    return {"train_loss": train_sum / n_train, "val_loss": loss / n, "val_accuracy": correct / n}


def emit(hooks: Hooks, phase: str, step: int, total_steps: int, metrics: dict[str, float],
         seconds: float) -> None:
    progress = min(1.0, step / total_steps) if total_steps > 0 else 1.0
    hooks.on_event(Event(phase=phase, step=step, total_steps=total_steps, progress=progress,
                         metrics=metrics, wall_time=seconds))


def _restore(model: nn.Module, path: Path | None, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, state: PhaseState, best: Best) -> tuple[PhaseState, Best, bool]:
    ckpt = load_checkpoint(path)
    if ckpt is None:
        return state, best, False
    model.load_state_dict(ckpt.group("model"))
    load_optimizer(optimizer, ckpt)
    if "rng" in ckpt.tensors:
        generator.set_state(ckpt.tensors["rng"])
    device = next(model.parameters()).device
    weights = ckpt.group("best")
    restored = Best(ckpt.state.best_step, ckpt.state.best_accuracy, ckpt.state.best_loss,
                    {k: v.to(device) for k, v in weights.items()} if weights else None)
    return ckpt.state, restored, True


def fit(model: nn.Module, train: DeviceSet, val: DeviceSet, settings: FitSettings, hooks: Hooks, phase: str,
        *, checkpoint: Path | None = None, epoch_metrics: EpochMetrics | None = None,
        stop_rule: StopRule | None = None, state: PhaseState | None = None, best: Best | None = None,
        generator: torch.Generator | None = None, announce: bool = True) -> FitResult:
    """Train ``model`` in place with Adam on cross-entropy; resumes from ``checkpoint`` if present.

    ``state``/``best`` seed a phase that already has steps (e.g. phase 2's warm start and ridge solve):
    the loop continues after ``state.step`` and never returns weights worse on validation than ``best``.
    ``epoch_metrics`` adds phase-specific curve points; ``stop_rule`` ends the phase early with a reason.
    The checkpoint is written after an epoch (each one, or once ``hooks.checkpoint_interval_s`` has
    passed), before its event, when a stop is requested between epochs, and marked finished at the end.
    """
    state = state or PhaseState()
    best = best or Best()
    if generator is None:
        generator = torch.Generator().manual_seed(settings.seed)
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    state, best, resumed = _restore(model, checkpoint, optimizer, generator, state, best)
    if state.finished:
        result = _result(model, state, resumed=True)
        result.skipped = True
        return result
    if announce:
        hooks.on_phase_start(phase)
    started = time.monotonic() - state.seconds
    step_fn = make_step(model, settings.autocast, gates_cached=train.gates is not None)
    rows = _rows_for_step(train, step_fn)
    gather = BatchGather()  # batch buffers for the whole phase (a CUDA graph reads them in place)
    graph = None
    hand_written = isinstance(step_fn, HandWrittenStep)  # fp32 or bf16 products (tests/gpu, both)
    if settings.cuda_graphs and EpochGraph.usable(train.x, train.y.device, hand_written, settings.batch_size,
                                                  len(train)):
        graph = EpochGraph(len(train), settings.batch_size, train.y.device)
    stopped_by = state.stopped_by or ("max_epochs" if state.step >= settings.epochs else None)
    last_saved = time.monotonic()
    while stopped_by is None:
        step = state.step + 1
        for group in optimizer.param_groups:
            group["lr"] = settings.lr_at(step) * state.extra.get("lr_scale", 1.0)
        loss_sum = _train_epoch(rows, optimizer, step_fn, settings.batch_size, generator, hooks,
                                settings.poll_seconds, gather, graph)
        metrics = evaluate_point(model, train, val, loss_sum)
        if epoch_metrics is not None:
            metrics.update(epoch_metrics(model))
        stopped_by = _update_best(model, step, metrics, best, state, settings)
        if settings.backtrack and stopped_by is None and state.stale > 0 and best.weights is not None:
            model.load_state_dict(best.weights)
            state.extra["lr_scale"] = state.extra.get("lr_scale", 1.0) * 0.5
            optimizer.restart()  # no stale moments: a fresh Adam, in the same tensors
            metrics["lr_scale"] = state.extra["lr_scale"]
        state.step, state.seconds = step, time.monotonic() - started
        state.history.append({"step": step, "seconds": state.seconds, **metrics})
        if stopped_by is None and stop_rule is not None:
            stopped_by = stop_rule(state.history)
        if stopped_by is None and step >= settings.epochs:
            stopped_by = "max_epochs"
        saved = stopped_by is not None or time.monotonic() - last_saved >= hooks.checkpoint_interval_s
        if saved:
            _save(checkpoint, state, model, optimizer, best, generator, stopped_by, settings.keep_best)
            last_saved = time.monotonic()
        emit(hooks, phase, step, settings.epochs, metrics, state.seconds)
        if stopped_by is None and hooks.should_stop():
            if not saved:  # a stop between epochs keeps every finished epoch
                _save(checkpoint, state, model, optimizer, best, generator, None, settings.keep_best)
            raise Cancelled(f"{phase} stopped after step {step}")
    model.zero_grad(set_to_none=True)  # the step's gradient buffers are not part of the result
    result = _result(model, state, resumed=resumed)
    if graph is not None:
        result.graph_captures, result.graph_replays = graph.captures, graph.replays
    return result


def _rows_for_step(train: DeviceSet, step: Step) -> DeviceSet:
    """The training rows the steps gather from: for a bf16 step on CPU a bf16 copy of the split, made
    once per phase. A random batch is memory-bound there: gathering half the bytes and casting nothing
    saves ~65 us of S's ~430 us step (Fashion-MNIST, 2 cores). Evaluation keeps the fp32 rows.

    Only up to ``LOW_COPY_MAX_BYTES``: above it each batch is cast instead, so a large data set keeps its
    host-memory bound (1M x 768: worker peak 1.22x the data set, 1.60x with the copy). Not on CUDA,
    where the copy would sit outside the device-memory budget and the cast is one small kernel."""
    low = step.low if isinstance(step, HandWrittenStep) else None
    if low is None or not isinstance(train.x, Tensor) or train.x.device.type != "cpu":
        return train
    if train.x.numel() * low.dtype.itemsize > LOW_COPY_MAX_BYTES:
        return train
    return DeviceSet(train.x.to(low.dtype), train.y, train.gates)


def _update_best(model: nn.Module, step: int, metrics: dict[str, float], best: Best, state: PhaseState,
                 settings: FitSettings) -> str | None:
    """Track the best point; the patience counter resets when validation accuracy or loss improves."""
    acc, loss = metrics["val_accuracy"], metrics["val_loss"]
    improved = best.improves(acc, loss) or loss < min(best.loss, _best_loss(state))
    if best.improves(acc, loss) or math.isinf(best.accuracy):
        best.take(model, step, acc, loss)
    state.best_step, state.best_accuracy, state.best_loss = best.step, best.accuracy, best.loss
    state.stale = 0 if improved else state.stale + 1
    if settings.patience is not None and state.stale >= settings.patience:
        return "patience"
    return None


def _best_loss(state: PhaseState) -> float:
    losses = [h["val_loss"] for h in state.history if "val_loss" in h]
    return min(losses) if losses else float("inf")


def _save(path: Path | None, state: PhaseState, model: nn.Module, optimizer: torch.optim.Optimizer,
          best: Best, generator: torch.Generator, stopped_by: str | None, keep_best: bool | str) -> None:
    """End of epoch: plain checkpoint; end of phase: restore best weights and mark finished."""
    if stopped_by is not None:
        restore = keep_best is True or (keep_best == "patience" and stopped_by == "patience")
        if restore and best.weights is not None:
            model.load_state_dict(best.weights)
        state.finished, state.stopped_by = True, stopped_by
    if path is None:
        return
    if state.finished:
        save_checkpoint(path, state, model)  # the result: no optimizer or best copy needed any more
    else:
        save_checkpoint(path, state, model, optimizer, best.weights, generator)


def _result(model: nn.Module, state: PhaseState, resumed: bool) -> FitResult:
    return FitResult(model=model, history=state.history, best_step=state.best_step,
                     best_accuracy=state.best_accuracy, stopped_by=state.stopped_by or "max_epochs",
                     seconds=state.seconds, resumed=resumed, extra=state.extra)


def finish_phase(path: Path | None, model: nn.Module, state: PhaseState, stopped_by: str) -> None:
    """Mark a phase finished without the loop (e.g. a closed-form-only phase 2)."""
    state.finished, state.stopped_by = True, stopped_by
    if path is not None:
        save_checkpoint(path, state, model)
