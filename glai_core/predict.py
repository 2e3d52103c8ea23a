"""Predictions from an exported model file: the path the API, the CLI and notebooks share.

``Predictor`` applies the standardisation stored in the artifact, so callers pass raw feature vectors
exactly as they were uploaded. Models trained on a frozen backbone (metadata ``backbone.name``) also
accept raw inputs (texts or images): those are embedded by ``glai_core.backbones``, imported only then,
so plain feature models never pay for (or need) the backbone packages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from glai_core.artifacts import load_artifact
from glai_core.preprocess import Standardizer

__all__ = ["PredictionError", "Predictor"]

class PredictionError(ValueError):
    """Inputs the model cannot score; the message says what is wrong with them."""


class Predictor:
    """A loaded model plus what it needs to turn raw rows into class names."""

    def __init__(self, model: nn.Module, metadata: dict[str, Any], standardizer: Standardizer | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 8192) -> None:
        self.model = model.to(device).eval()
        self.metadata = metadata
        self.standardizer = standardizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.class_names: list[str] = list(metadata["class_names"])
        self.in_features: int = int(metadata["architecture"]["in_features"])
        self._dtype = next(model.parameters()).dtype

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Predictor:
        artifact = load_artifact(path, device=device)
        return cls(artifact.model, artifact.metadata, artifact.standardizer, device=device)

    @property
    def backbone(self) -> str | None:
        backbone = self.metadata.get("backbone") or {}
        return backbone.get("name")

    # ------------------------------------------------------------------------------------- inputs
    def features(self, inputs: Any) -> np.ndarray:
        """Feature matrix (n, d) float32 for ``inputs``: numeric rows, or raw inputs for a backbone model."""
        if self.backbone is not None and _looks_raw(inputs, self.in_features):
            return self.embed(inputs)
        return self._numeric(inputs)

    def _numeric(self, inputs: Any) -> np.ndarray:
        try:
            x = np.asarray(inputs, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise PredictionError("inputs must be numbers: a 2-D array or a list of equally long rows "
                                  f"({exc})") from exc
        if x.ndim == 1:
            x = x.reshape(-1, self.in_features) if x.size == 0 else x.reshape(1, -1)  # none, or one sample
        if x.ndim != 2:
            raise PredictionError(f"inputs must be 2-D (samples x features), got shape {x.shape}")
        if x.shape[1] != self.in_features:
            raise PredictionError(f"each row must have {self.in_features} features, got {x.shape[1]}")
        bad = ~np.isfinite(x)
        if bad.any():
            row = int(np.nonzero(bad)[0][0])
            raise PredictionError(f"inputs contain {int(bad.sum())} NaN or infinite values (first in row "
                                  f"{row})")
        return x

    def embed(self, inputs: Any) -> np.ndarray:
        """The extension point for raw inputs: the backbone named in the metadata embeds them."""
        from glai_core import backbones  # lazy: heavy optional dependencies

        backbone = self.metadata["backbone"]
        # The stored preprocessing (e.g. image input size) makes embedding match what training saw.
        described = {**(backbone.get("preprocessing") or {}), "backbone": backbone["name"]}
        items = [inputs] if isinstance(inputs, (str, bytes)) else list(inputs)
        embedded = backbones.embed_raw(described, items, device=str(self.device))
        if isinstance(embedded, torch.Tensor):
            embedded = embedded.detach().cpu().numpy()
        return self._numeric(embedded)

    # --------------------------------------------------------------------------------- predictions
    @torch.inference_mode()
    def logits(self, inputs: Any) -> np.ndarray:
        x = self.features(inputs)
        outputs = []
        for start in range(0, x.shape[0], self.batch_size):
            batch = torch.from_numpy(x[start:start + self.batch_size]).to(self.device, self._dtype)
            if self.standardizer is not None:
                batch = self.standardizer.apply(batch)
            outputs.append(self.model(batch).float().cpu())
        if not outputs:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return torch.cat(outputs).numpy()

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """Softmax class probabilities (n, m), columns in ``class_names`` order."""
        return torch.softmax(torch.from_numpy(self.logits(inputs)), dim=1).numpy()

    def predict(self, inputs: Any) -> list[str]:
        """The most likely class name per row."""
        logits = self.logits(inputs)
        return [self.class_names[int(k)] for k in logits.argmax(axis=1)]


def _looks_raw(inputs: Any, width: int) -> bool:
    """Raw inputs: texts, or arrays that are not already (n, width) feature rows (e.g. images)."""
    if isinstance(inputs, str):
        return True
    if isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], (str, bytes)):
        return True
    try:
        array = np.asarray(inputs)
    except (TypeError, ValueError):
        return True
    if array.dtype.hasobject or array.dtype.kind in "SU":
        return True
    is_rows = array.ndim == 2 and array.shape[1] == width
    is_row = array.ndim == 1 and array.shape[0] == width
    return not (is_rows or is_row)
