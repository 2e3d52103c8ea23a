"""Input standardisation fitted on the training split and shipped inside every exported model.

Keeping it in the artifact means ``predict`` on raw feature vectors gives the same answer as training saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Standardizer:
    mean: Tensor  # (d,)
    std: Tensor  # (d,), never zero

    @classmethod
    def fit(cls, x: np.ndarray | Tensor, chunk: int = 65536) -> Standardizer:
        """Mean and std in float64, in chunks, so a memory-mapped array is never loaded whole."""
        n, d = x.shape
        total = np.zeros(d, dtype=np.float64)
        total_sq = np.zeros(d, dtype=np.float64)
        for start in range(0, n, chunk):
            block = x[start:start + chunk]
            block = block.detach().cpu().numpy() if isinstance(block, Tensor) else np.asarray(block)
            block = block.astype(np.float64, copy=False)
            total += block.sum(axis=0)
            total_sq += (block * block).sum(axis=0)
        mean = total / n
        var = np.maximum(total_sq / n - mean * mean, 0.0)
        std = np.sqrt(var)
        std[std < 1e-8] = 1.0  # constant features pass through unscaled
        return cls(torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32)))

    @classmethod
    def identity(cls, d: int) -> Standardizer:
        return cls(torch.zeros(d), torch.ones(d))

    def apply(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    def tensors(self) -> dict[str, Tensor]:
        return {"preprocess.mean": self.mean.contiguous(), "preprocess.std": self.std.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Standardizer:
        return cls(tensors["preprocess.mean"], tensors["preprocess.std"])
