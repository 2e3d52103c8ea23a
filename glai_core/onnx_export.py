"""ONNX copies of exported models, for runtimes without PyTorch, checked against PyTorch before they ship.

The graph takes what ``Predictor`` takes and gives what it gives:

* input ``features``: (batch, d) float32, raw feature rows as uploaded (for a model on a frozen backbone:
  the backbone's embeddings, which the graph does not contain);
* the standardisation stored with the model is inside the graph, and so is the softmax;
* outputs ``logits`` and ``probabilities``: (batch, m), columns in ``class_names`` order;
* ``metadata_props``: ``glai`` holds the model's JSON metadata (class names, architecture, backbone...).

Exporter: torch's TorchScript-based one (``torch.onnx.export(dynamo=False)``), which needs only the
``onnx`` package. The torch.export-based exporter also works on these modules but needs onnxscript and
onnx-ir and took 5-16 s per small block on two cores against 0.2-0.3 s, once per exported model of every
job. torch marks the TorchScript exporter deprecated; torch 2.13 (the pinned version) has it.

What the trace holds: ``GLAIBlock.forward(x)`` without ``gates`` computes them from its frozen structure
(``StructuralMLP.gates``: each hidden layer's pre-activation > 0), so the graph carries the structure's
layers as well as the path contraction; a pruned block's mask is multiplied into Theta and folded into a
constant. The ONNX file of a masked block is therefore as large as a dense one.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glai_core.artifacts import _jsonable, architecture_of
from glai_core.preprocess import Standardizer

__all__ = ["INPUT", "OPSET", "OUTPUTS", "OnnxCheck", "check_onnx", "export_onnx", "read_onnx_metadata",
           "run_onnx"]

INPUT = "features"
OUTPUTS = ("logits", "probabilities")
OPSET = 17  # read by every onnxruntime since 1.14
METADATA_KEY = "glai"
CHECK_ROWS = 512  # held-out rows a check compares; more only costs export time
TOLERANCE = 1e-4


class _Graph(nn.Module):
    """What gets traced: standardise, the model, softmax. Holds the mean and std as constants."""

    def __init__(self, model: nn.Module, standardizer: Standardizer | None) -> None:
        super().__init__()
        self.model = model
        d = int(model.in_features)
        mean = standardizer.mean if standardizer is not None else torch.zeros(d)
        std = standardizer.std if standardizer is not None else torch.ones(d)
        self.standardize = standardizer is not None
        self.register_buffer("mean", mean.detach().to("cpu", torch.float32).clone())
        self.register_buffer("std", std.detach().to("cpu", torch.float32).clone())

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = (features - self.mean) / self.std if self.standardize else features
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


def _float_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy in eval mode: the caller's model (maybe on a GPU) is left as it is."""
    import copy

    copied = copy.deepcopy(model).to("cpu", torch.float32)
    return copied.eval()


def export_onnx(path: str | os.PathLike[str], model: nn.Module, standardizer: Standardizer | None = None,
                metadata: Mapping[str, Any] | None = None, opset: int = OPSET) -> Path:
    """Write ``model`` (a ``GLAIBlock`` or ``StructuralMLP``) as one ONNX file, atomically; returns it."""
    import onnx

    architecture = architecture_of(model)  # refuses anything else, with the reason
    graph = _Graph(_float_copy(model), standardizer).eval()
    example = torch.zeros(2, architecture["in_features"])
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter announces its deprecation on every call (see the module doc).
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            torch.onnx.export(graph, (example,), str(tmp), dynamo=False, input_names=[INPUT],
                              output_names=list(OUTPUTS), opset_version=opset, do_constant_folding=True,
                              dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)})
        proto = onnx.load(str(tmp))
        described = {**dict(metadata or {}), "architecture": architecture,
                     "standardize": standardizer is not None, "input": INPUT, "outputs": list(OUTPUTS)}
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(_jsonable(described), allow_nan=False)
        proto.producer_name = "glai"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``glai`` metadata of an ONNX file written by ``export_onnx``."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return dict(json.loads(entry.value))
    raise ValueError(f"{Path(path).name} has no '{METADATA_KEY}' metadata: not exported by glai")


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on the same rows: the largest differences and whether they are within
    ``tolerance`` (probabilities absolutely, logits relative to their size)."""

    rows: int
    max_abs_diff_probabilities: float
    max_abs_diff_logits: float
    same_class_rows: int  # rows whose most likely class is the same in both
    tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: a model is checked per export
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of ``rows`` from onnxruntime on the CPU."""
    logits, probabilities = _session(Path(path)).run(list(OUTPUTS), {INPUT: np.asarray(rows, np.float32)})
    return np.asarray(logits), np.asarray(probabilities)


def check_onnx(path: str | os.PathLike[str], model: nn.Module, standardizer: Standardizer | None,
               rows: np.ndarray, tolerance: float = TOLERANCE) -> OnnxCheck:
    """Run the ONNX file with onnxruntime and the model with PyTorch (through ``Predictor``, the path the
    API and the CLI predict with) on up to ``CHECK_ROWS`` of ``rows`` and compare."""
    from glai_core.predict import Predictor

    x = np.ascontiguousarray(np.asarray(rows, dtype=np.float32)[:CHECK_ROWS])
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"check_onnx needs a non-empty (n, d) array of rows, got shape {x.shape}")
    architecture = architecture_of(model)
    reference = Predictor(_float_copy(model), {"class_names": list(range(architecture["out_features"])),
                                               "architecture": architecture}, standardizer)
    torch_logits = reference.logits(x)
    torch_probabilities = torch.softmax(torch.from_numpy(torch_logits), dim=1).numpy()
    onnx_logits, onnx_probabilities = run_onnx(path, x)
    diff_p = float(np.max(np.abs(onnx_probabilities - torch_probabilities)))
    diff_logits = np.abs(onnx_logits - torch_logits)
    logit_ok = bool(np.all(diff_logits <= tolerance * np.maximum(1.0, np.abs(torch_logits))))
    same = int(np.sum(onnx_logits.argmax(axis=1) == torch_logits.argmax(axis=1)))
    return OnnxCheck(rows=int(x.shape[0]), max_abs_diff_probabilities=diff_p,
                     max_abs_diff_logits=float(diff_logits.max()), same_class_rows=same, tolerance=tolerance,
                     passed=bool(diff_p <= tolerance and logit_ok and np.isfinite(diff_p)))
