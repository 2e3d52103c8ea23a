"""Unstructured-pruned path weights stored sparse: the kept values plus one bit per path.

A pruned block used to be exported as its dense Theta plus a float mask of the same shape, so a model
with 90 % of its paths removed was twice the size of the dense one. Packed, it takes
``4 * kept + numel / 8`` bytes (float32 values): at 50 % sparsity about half the dense size, at 90 %
about an eighth. The bits are numpy's ``packbits`` order (row-major over Theta, most significant bit
first); the values are the kept entries in the same order.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

VALUES, BITS = "model.theta_values", "model.theta_bits"


def pack(theta: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The two tensors that replace ``model.theta`` and ``model.theta_mask`` in a file."""
    keep = (mask.detach().to("cpu").reshape(-1) != 0).numpy()
    values = theta.detach().to("cpu").reshape(-1)[torch.from_numpy(keep)].contiguous()
    return {VALUES: values, BITS: torch.from_numpy(np.packbits(keep)).contiguous()}


def packed_bytes(shape: tuple[int, ...]) -> int:
    return math.ceil(math.prod(shape) / 8)


def unpack(values: Tensor, bits: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Dense Theta (zeros where pruned) and its 0/1 mask, in the values' dtype and device."""
    count = math.prod(shape)
    if bits.dtype != torch.uint8 or tuple(bits.shape) != (packed_bytes(shape),):
        raise ValueError(f"theta bits must be {packed_bytes(shape)} bytes for Theta of shape {shape}")
    keep = torch.from_numpy(np.unpackbits(bits.cpu().numpy(), count=count).astype(bool)).to(values.device)
    if int(keep.sum()) != values.numel():
        raise ValueError(f"the theta bits keep {int(keep.sum())} paths but {values.numel()} values are "
                         "stored")
    theta = torch.zeros(count, dtype=values.dtype, device=values.device)
    theta[keep] = values.reshape(-1)
    return theta.view(shape), keep.to(values.dtype).view(shape)
