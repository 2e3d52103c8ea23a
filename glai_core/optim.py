"""Adam for small heads: torch's fused kernel without the per-step Python around it.

``torch.optim.Adam(fused=True).step`` re-collects every parameter, gradient and state tensor, regroups
them by device and dtype and enters a profiler scope on every call: about 80 us per step on this CPU
(measured 109 us per step for S's four tensors against 25 us for the same kernel called directly), 10%
of a narrow structural network's epoch. ``LeanAdam`` is that optimiser with the common case (one device,
one float dtype, no AMSGrad, every parameter has a gradient) sent straight to the same kernel. The state
is Adam's own, created by Adam's own first step, so ``state_dict``, checkpoints and resumes are unchanged.
Anything else takes ``Adam.step``.

For a CUDA graph (``glai_core.graphs``) the learning rate must be read at replay time, not baked into the
recorded kernel: ``lr_tensor``, when set, is a device scalar the kernel reads instead of the group's float
(the graph's owner refills it from the group before every epoch).
"""

from __future__ import annotations

import torch

_KERNEL = getattr(torch, "_fused_adam_", None)  # the kernel Adam(fused=True) calls; absent: plain step


class LeanAdam(torch.optim.Adam):
    def __init__(self, params, lr: float, weight_decay: float = 0.0) -> None:  # noqa: ANN001
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True)
        self.lr_tensor: torch.Tensor | None = None  # set only where capturable(): one param group

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's signature)
        if closure is not None or _KERNEL is None:
            return super().step(closure)
        calls = []
        for group in self.param_groups:
            params = group["params"]
            states = [self.state.get(p) for p in params]
            if not self._direct(group, params, states):
                return super().step()
            calls.append((group, params, states))
        for group, params, states in calls:
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            _KERNEL(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=self._lr(group),
                    beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=False)
        return None

    @torch.no_grad()
    def restart(self) -> None:
        """Forget the moments and the step count in place: the next step is a fresh Adam's first step
        (the state a fresh optimiser would create, zeros, in the same tensors, so a CUDA graph that
        captured them stays valid)."""
        for state in self.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()

    def capturable(self) -> bool:
        """True when ``step`` is one kernel call on tensors that stay put: what a CUDA graph can record."""
        if _KERNEL is None or len(self.param_groups) != 1:
            return False
        group = self.param_groups[0]
        return self._direct(group, group["params"], [self.state.get(p) for p in group["params"]])

    def _lr(self, group: dict) -> float | torch.Tensor:
        return group["lr"] if self.lr_tensor is None else self.lr_tensor

    @staticmethod
    def _direct(group: dict, params: list[torch.Tensor], states: list) -> bool:
        """True when the kernel alone does exactly what ``Adam.step`` would (state already created)."""
        flags = ("amsgrad", "maximize", "differentiable", "decoupled_weight_decay")
        if not params or any(group.get(flag) for flag in flags):
            return False
        if torch.is_tensor(group["lr"]) or any(not s or "exp_avg" not in s for s in states):
            return False
        first = params[0]
        return all(p.grad is not None and p.device == first.device and p.dtype == first.dtype
                   and p.grad.dtype == p.dtype and not p.grad.is_sparse for p in params)


# Optimizer.__init__ wraps a class's ``step`` in a profiler scope plus step-hook dispatch (~50 us a call
# here) unless the function says it is already wrapped; the lean step registers no hooks, so it opts out.
LeanAdam.step.hooked = True  # type: ignore[attr-defined]
