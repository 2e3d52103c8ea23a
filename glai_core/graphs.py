"""A training epoch's batches replayed as one CUDA graph.

On a GPU a small head's step is some twenty kernels of a few microseconds each, and launching them one by
one from Python costs more than running them. With the hand-written step (``glai_core.steps``) and
``LeanAdam`` a step is a fixed sequence of kernels on tensors that stay put: the batch buffers of a
``BatchGather`` kept for the whole phase, the gradient buffers, Adam's state and a device copy of the
learning rate. So the full batches of an epoch are captured once, reading their indices from a device
buffer that every epoch refills with its new permutation, and each epoch is one graph launch. The graph
runs exactly the eager loop's kernels in the eager loop's order, so the result is the eager loop's
(tested against it on the device).

Each epoch: the first batch runs eagerly, then the graph replays batches 2..K, then the short last batch
(if any) runs eagerly. The eager first step is what makes capture safe without a warm-up epoch: on a
fresh optimiser it creates Adam's state (a graph cannot allocate it), and it runs every kernel of the step
once on the capture stream (cuBLAS workspaces, lazily loaded kernels) before the capture records them.

* the learning rate is read from ``LeanAdam.lr_tensor`` at replay time, so schedules need no recapture,
  and phase 2's backtracking restarts Adam in place (``LeanAdam.restart``): one capture per phase;
* another optimiser object means a new capture;
* a capture that fails (an unsupported kernel, a driver without graphs) is reported once as a warning and
  the phase continues eagerly: nothing was run by the failed capture.

Cancellation is polled after each epoch instead of during it: on a GPU an epoch of a small head takes
milliseconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from glai_core.optim import LeanAdam

# body(order, total, starts): run the steps whose batches start at ``starts``, reading the permutation
# from ``order`` and adding each step's summed loss into ``total``
Body = Callable[[Tensor, Tensor, range], None]


def batch_starts(n: int, batch_size: int) -> tuple[range, range, range]:
    """The eager loop's batch starts ``range(0, n, batch_size)`` cut into the first batch (eager), the
    other full batches (the graph) and the short last batch (eager; empty when n divides evenly)."""
    full_stop = (n // batch_size) * batch_size
    return (range(0, min(batch_size, full_stop), batch_size), range(batch_size, full_stop, batch_size),
            range(full_stop, n, batch_size))


class EpochGraph:
    """Runs the epochs of one phase: the first batch eagerly, the other full batches as a graph replay."""

    def __init__(self, n: int, batch_size: int, device: torch.device) -> None:
        self.first, self.full, self.tail = batch_starts(n, batch_size)
        self.order = torch.empty(n, dtype=torch.long, device=device)
        self.total = torch.zeros((), dtype=torch.float32, device=device)
        self.stream = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.owner: LeanAdam | None = None  # the optimiser the graph was captured with
        self.failed = False
        self.captures = 0
        self.replays = 0

    @staticmethod
    def usable(x: object, device: torch.device, hand_written: bool, batch_size: int, n: int) -> bool:
        """Graphs need CUDA, device-resident rows, the hand-written step and two full batches or more."""
        return (device.type == "cuda" and hand_written and isinstance(x, Tensor) and x.is_cuda
                and n >= 2 * batch_size)

    def run(self, host_order: Tensor, optimizer: torch.optim.Optimizer, body: Body) -> Tensor:
        """One epoch in ``host_order``; returns its summed training loss (a device tensor, no sync)."""
        current = torch.cuda.current_stream(self.order.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            self.order.copy_(host_order)
            self.total.zero_()
            if isinstance(optimizer, LeanAdam) and optimizer.lr_tensor is not None:
                optimizer.lr_tensor.fill_(optimizer.param_groups[0]["lr"])
            body(self.order, self.total, self.first)
            if self.graph is not None and self.owner is not optimizer:
                self.graph, self.owner = None, None  # captured with another optimiser's state
            if self.graph is None and not self.failed and isinstance(optimizer, LeanAdam) \
                    and optimizer.capturable():
                self._capture(optimizer, body)
            if self.graph is not None:
                self.graph.replay()
                self.replays += 1
            else:
                body(self.order, self.total, self.full)
            body(self.order, self.total, self.tail)
            total = self.total.clone()
        current.wait_stream(self.stream)
        return total

    def _capture(self, optimizer: LeanAdam, body: Body) -> None:
        if optimizer.lr_tensor is None:
            optimizer.lr_tensor = torch.full((), optimizer.param_groups[0]["lr"], dtype=torch.float32,
                                             device=self.order.device)
        graph = torch.cuda.CUDAGraph()
        # capture_begin/end rather than the torch.cuda.graph context, which also synchronises the device,
        # runs gc.collect() and empties the allocator's cache: tens of milliseconds in a large process,
        # more than a whole epoch of a small head. Called inside run()'s ``torch.cuda.stream(self.stream)``.
        try:
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                body(self.order, self.total, self.full)
            finally:
                graph.capture_end()
        except RuntimeError as exc:  # nothing ran during the capture: continue eagerly
            self.failed = True
            optimizer.lr_tensor = None
            warnings.warn(f"CUDA graph capture failed, training eagerly: {exc}", RuntimeWarning,
                          stacklevel=3)
            return
        self.graph, self.owner = graph, optimizer
        self.captures += 1
