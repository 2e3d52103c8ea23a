"""Where a job computes and in what precision: one reading for phase 1, phase 2, a child's refit and a
merge, so none of them runs a slower path than the others."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16_cpu() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The compute dtype of the training steps (None: fp32); weights, gradients, Adam, evaluation and
    closed-form solves stay fp32/fp64 whatever it is.

    "auto" is what measured fastest at the same accuracy (docs/performance.md):
    * CUDA: fp32 with TF32 tensor-core matmuls. Small heads are bound by kernel latency there, so bf16's
      casts cost more than its products save, even inside whole-epoch CUDA graphs (``glai_core.graphs``,
      which take both): 0.0152 s per MLP epoch in TF32 against 0.0168 s in bf16 on an H100.
    * CPU with native bf16: bf16 products (mixed precision, hand-written steps), 2.6-3.7x the plain fp32
      loop per epoch on 2 cores at the same validation accuracy; fp32 alone reached 1.2-1.6x.
    * other CPUs: fp32. Without bf16 hardware the casts cost more than they save (0.4-0.6x measured).
    """
    if name not in ("auto", "fp32", "bf16"):
        raise ValueError(f"unknown precision {name!r}: use auto, fp32 or bf16")
    if device.type == "cuda":  # set both ways: a worker process runs many jobs, fp32 ones included
        torch.backends.cuda.matmul.allow_tf32 = name != "fp32"
        torch.backends.cudnn.allow_tf32 = name != "fp32"
    if name == "bf16" or (name == "auto" and device.type == "cpu" and native_bf16_cpu()):
        return torch.bfloat16
    return None


def precision_label(autocast: torch.dtype | None, device: torch.device) -> str:
    """What the training products ran in: "bf16", "tf32" or "fp32" (for summaries and logs)."""
    if autocast is not None:
        return "bf16"
    return "tf32" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else "fp32"


__all__ = ["native_bf16_cpu", "precision_label", "resolve_device", "resolve_precision"]
