"""The rows a lineage of jobs trained on, one *part* per dataset, placed under one frozen standardiser.

A job that reuses a structure must see its parent's rows exactly as the parent saw them: the same
train/validation split of each dataset (``data.split_indices`` with the job's seed and fraction, or the
dataset's own validation split) and the standardiser of the job that trained the structure, because S's
gates were learned on those inputs. A ``Part`` records that recipe (it is what lineage stores), and
``place_part`` rebuilds the rows from it, with labels mapped into the model's class order (parent classes
first, new ones after).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from glai_core.data import DataError, LoadedData, split_indices
from glai_core.preprocess import Standardizer
from glai_core.train import DeviceSet

BLOCK_ROWS = 65536  # rows standardised at a time: host memory stays at one block beside the result


@dataclass(frozen=True)
class Part:
    """One dataset's rows as a job used them. ``skip_rows``: leading rows that belong to earlier parts (an
    appended dataset repeats its parent's rows first)."""

    dataset_id: str
    seed: int = 0
    validation_fraction: float = 0.2
    skip_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Part:
        return cls(str(data["dataset_id"]), int(data.get("seed", 0)), float(data.get("validation_fraction",
                                                                                     0.2)),
                   int(data.get("skip_rows", 0)))


@dataclass
class PlacedPart:
    part: Part
    train: DeviceSet | None  # None when only the validation rows were asked for
    val: DeviceSet
    train_rows: int  # training rows of the part (counted even when not placed)


def union_classes(model_classes: list[str], dataset_classes: list[Any]) -> list[str]:
    """The model's classes first, in order, then the dataset's new ones in the dataset's order."""
    names = [str(c) for c in model_classes]
    return names + [str(c) for c in dataset_classes if str(c) not in names]


def label_map(dataset_classes: list[Any], classes: list[str]) -> np.ndarray:
    """Dataset label index -> model class index; every dataset class must be a model class."""
    classes = [str(c) for c in classes]
    missing = [str(c) for c in dataset_classes if str(c) not in classes]
    if missing:
        raise DataError(f"classes {missing[:5]} are not among the model's classes", "dataset_id")
    return np.array([classes.index(str(c)) for c in dataset_classes], dtype=np.int64)


def split(data: LoadedData, part: Part) -> tuple[np.ndarray, np.ndarray | None]:
    """(training row indices, validation row indices or None for the dataset's own validation split)."""
    n = int(data.x.shape[0])
    if part.skip_rows and data.x_val is not None:
        raise DataError("an appended dataset cannot ship its own validation split", "dataset_id")
    if not 0 <= part.skip_rows < n:
        raise DataError(f"the dataset has {n} rows, not more than the {part.skip_rows} it repeats",
                        "dataset_id")
    if data.x_val is not None:
        return np.arange(n), None
    train, val = split_indices(np.asarray(data.y[part.skip_rows:]), len(data.class_names),
                               part.validation_fraction, part.seed)
    return train + part.skip_rows, val + part.skip_rows


def _rows(x: Any, index: np.ndarray, standardizer: Standardizer, device: torch.device) -> torch.Tensor:
    out = torch.empty((index.shape[0], int(np.prod(x.shape[1:]))), dtype=torch.float32, device=device)
    for start in range(0, index.shape[0], BLOCK_ROWS):
        block = torch.from_numpy(np.asarray(x[index[start:start + BLOCK_ROWS]], dtype=np.float32))
        out[start:start + block.shape[0]] = standardizer.apply(block.reshape(block.shape[0], -1)).to(device)
    return out


def place_part(data: LoadedData, part: Part, classes: list[str], standardizer: Standardizer,
               device: torch.device | str = "cpu", with_train: bool = True) -> PlacedPart:
    """The part's splits on ``device``, standardised with ``standardizer``, labels in ``classes`` order."""
    device = torch.device(device)
    mapping = label_map(list(data.class_names), classes)
    train_index, val_index = split(data, part)
    y = np.asarray(data.y)

    def labels(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(mapping[np.asarray(values, dtype=np.int64)]).to(device)

    train = None
    if with_train:
        train = DeviceSet(_rows(data.x, train_index, standardizer, device), labels(y[train_index]))
    if val_index is None:
        assert data.x_val is not None and data.y_val is not None
        everything = np.arange(data.x_val.shape[0])
        val = DeviceSet(_rows(data.x_val, everything, standardizer, device), labels(np.asarray(data.y_val)))
    else:
        val = DeviceSet(_rows(data.x, val_index, standardizer, device), labels(y[val_index]))
    return PlacedPart(part, train, val, int(train_index.shape[0]))


def train_blocks(data: LoadedData, part: Part, classes: list[str], standardizer: Standardizer,
                 device: torch.device | str = "cpu", rows: int = BLOCK_ROWS) -> Iterator[DeviceSet]:
    """The part's training rows, ``rows`` at a time (for statistics over splits too large to place)."""
    device = torch.device(device)
    mapping = label_map(list(data.class_names), classes)
    train_index, _ = split(data, part)
    y = np.asarray(data.y)
    for start in range(0, train_index.shape[0], rows):
        index = train_index[start:start + rows]
        labels = torch.from_numpy(mapping[np.asarray(y[index], dtype=np.int64)]).to(device)
        yield DeviceSet(_rows(data.x, index, standardizer, device), labels)


def concat(sets: list[DeviceSet]) -> DeviceSet:
    """One split from several (no gates: they are cached afterwards for the whole union)."""
    if len(sets) == 1:
        return DeviceSet(sets[0].x, sets[0].y)
    return DeviceSet(torch.cat([s.x for s in sets]), torch.cat([s.y for s in sets]))


__all__ = ["Part", "PlacedPart", "concat", "label_map", "place_part", "split", "train_blocks",
           "union_classes"]
