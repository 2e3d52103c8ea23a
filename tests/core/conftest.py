"""Fixtures for the library tests."""

from __future__ import annotations

import pytest
import torch

from glai_core.data import builtin, train_val_split
from glai_core.preprocess import Standardizer
from glai_core.train import DeviceSet


@pytest.fixture(scope="module")
def digits_sets() -> tuple[DeviceSet, DeviceSet]:
    """sklearn digits, standardised on a seeded 80/20 split, as training and validation sets."""
    data = train_val_split(builtin("digits"), 0.2, 0)
    scaler = Standardizer.fit(data.x)
    assert data.x_val is not None and data.y_val is not None
    return (DeviceSet(scaler.apply(torch.as_tensor(data.x)), torch.as_tensor(data.y)),
            DeviceSet(scaler.apply(torch.as_tensor(data.x_val)), torch.as_tensor(data.y_val)))
