"""The reference every speed claim is measured against: a plain PyTorch training loop.

This is deliberately the loop most people write (issue 5's yardstick): ``nn.Linear`` layers, ``Adam``,
batch 512, indexing a device tensor with a fresh permutation each step, ``loss.item()`` every step and
an unbatched-by-design evaluation at epoch end. It is not used by the product.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn


def plain_mlp(in_features: int, hidden: list[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def plain_train(model: nn.Module, x: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor, epochs: int,
                lr: float = 1e-3, batch_size: int = 512, seed: int = 0) -> list[dict[str, float]]:
    """Train with the plain loop; returns one record per epoch (seconds, loss, val accuracy)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(x.shape[0], device=x.device)
        total = 0.0
        for i in range(0, x.shape[0], batch_size):
            index = order[i:i + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            total += loss.item()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        if x.is_cuda:
            torch.cuda.synchronize()
        history.append({"seconds": time.perf_counter() - start, "loss": total, "val_accuracy": accuracy})
    return history
