"""Path features of a GLAI block with its gates fixed: the design matrix of the convex phase 2.

Row b of F is g_L(b) x g~_{L-1}(b) x ... x g~_1(b) x x~(b) (Kronecker products), ordered like
Theta[k].flatten(), so the block's logits are F Theta[k]^T + c_k. The solvers (closed form, CG, L-BFGS)
share these helpers and the (D+1, m) column-per-output layout of (Theta, c).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from glai_core.model import GLAIBlock

CHUNK_BYTES = 256 * 1024**2  # working memory for one chunk of explicit features


def path_features(x: Tensor, gates: list[Tensor]) -> Tensor:
    """Explicit rows of F for a chunk: (b, prod(theta.shape[1:])), ordered like Theta[k].flatten()."""
    feats = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
    for level, gate in enumerate(gates):
        g = gate.to(feats.dtype)
        if level < len(gates) - 1:
            g = torch.cat([g, g.new_ones(g.shape[0], 1)], dim=1)
        feats = (g[:, :, None] * feats[:, None, :]).reshape(x.shape[0], -1)
    return feats


def feature_dim(block: GLAIBlock) -> int:
    return math.prod(block.theta.shape[1:])


def chunk_rows(dim: int) -> int:
    return max(1, min(65536, CHUNK_BYTES // (8 * (dim + 1))))


def flat_weights(block: GLAIBlock, theta: Tensor, bias: Tensor) -> Tensor:
    """(Theta, c) -> (D+1, m) float64 column-per-output layout of the normal equations."""
    m = block.out_features
    return torch.cat([theta.reshape(m, -1).T, bias[None, :]], dim=0).double()


def unflat_weights(block: GLAIBlock, flat: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    dtype = dtype or block.theta.dtype
    theta = flat[:-1].T.reshape(block.theta.shape).to(dtype)
    return theta.contiguous(), flat[-1].to(dtype).contiguous()
