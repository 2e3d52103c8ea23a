"""Exported models: one ``.safetensors`` file per model, never pickle.

Layout of a file:
* tensors ``model.<state_dict key>`` (for a GLAI block: the frozen structure ``model.structure.layers.*``,
  ``model.theta`` and ``model.bias``) and, when the inputs are standardised, ``preprocess.mean`` /
  ``preprocess.std``. After unstructured pruning Theta is stored sparse (format 2, architecture
  ``theta_storage: "packed"``): ``model.theta_values`` (the kept weights) and ``model.theta_bits`` (one bit
  per path, ``glai_core.sparse_theta``) instead of ``model.theta`` and a dense ``model.theta_mask``, so a
  pruned model is smaller than the dense one; format-1 files (dense Theta + mask) still load;
* the safetensors header metadata key ``glai``: JSON with ``format_version``, ``architecture``
  (kind mlp|glai, in_features, hidden, out_features, theta_mask[, theta_storage]), ``class_names``,
  ``preprocessing``, ``backbone`` (null or {name, preprocessing}), ``summary`` and whatever else the caller
  passed.

Loading parses and checks the header (magic, lengths, JSON, format version, expected tensor names,
shapes and dtypes) before a single tensor byte is read, so a pickle, a truncated download or a file for
another model fails with ``ArtifactError`` that says which.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from glai_core import sparse_theta
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.preprocess import Standardizer

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "Artifact", "ArtifactError", "architecture_of", "load_artifact",
           "load_model", "read_metadata", "save_model"]

FORMAT_VERSION = 2  # the newest this release writes (for packed Theta; other models are written as 1)
READABLE_VERSIONS = (1, 2)
PACKED = "packed"
METADATA_KEY = "glai"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16}
_BIT_DTYPES = {"U8": torch.uint8}
_PREPROCESS_KEYS = ("preprocess.mean", "preprocess.std")


class ArtifactError(ValueError):
    """The file is not a loadable GLAI model; the message says why (pickle, truncated, wrong header...)."""


@dataclass
class Artifact:
    model: nn.Module
    metadata: dict[str, Any]
    standardizer: Standardizer | None


# ------------------------------------------------------------------------------------------ saving

def architecture_of(model: nn.Module) -> dict[str, Any]:
    """The JSON description that rebuilds an empty model of the same shape."""
    if isinstance(model, GLAIBlock):
        kind, mask = "glai", model.theta_mask is not None
    elif isinstance(model, StructuralMLP):
        kind, mask = "mlp", False
    else:
        raise TypeError(f"cannot export {type(model).__name__}: only StructuralMLP and GLAIBlock")
    arch = {"kind": kind, "in_features": int(model.in_features), "hidden": [int(h) for h in model.hidden],
            "out_features": int(model.out_features), "theta_mask": mask}
    if mask:
        arch["theta_storage"] = PACKED
    return arch


def _jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy/torch scalars unwrapped, NaN/Inf as null, keys as strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")


def _normalise_backbone(backbone: Any) -> dict[str, Any] | None:
    """None, a name, {name, preprocessing} or backbones.describe()'s dict -> None or {name, preprocessing}."""
    if backbone is None:
        return None
    if not isinstance(backbone, Mapping):
        return {"name": str(backbone), "preprocessing": {}}
    if "name" in backbone:
        return {"preprocessing": {}, **backbone}
    if "backbone" in backbone:  # the describe() metadata itself
        return {"name": str(backbone["backbone"]), "preprocessing": dict(backbone)}
    raise ValueError("backbone metadata needs a 'name'")


def _header_metadata(model: nn.Module, metadata: Mapping[str, Any], standardizer: Standardizer | None,
                     ) -> dict[str, Any]:
    architecture = architecture_of(model)
    meta = dict(metadata)
    names = [str(n) for n in meta.get("class_names") or range(architecture["out_features"])]
    if len(names) != architecture["out_features"]:
        raise ValueError(f"{len(names)} class names for {architecture['out_features']} outputs")
    preprocessing = dict(meta.get("preprocessing") or {})
    preprocessing["standardize"] = standardizer is not None
    version = 2 if architecture.get("theta_storage") == PACKED else 1  # dense files stay readable by 1
    meta.update(format_version=version, architecture=architecture, class_names=names,
                preprocessing=preprocessing, backbone=_normalise_backbone(meta.get("backbone")),
                summary=meta.get("summary") or {})
    return _jsonable(meta)


def _tensors(model: nn.Module, standardizer: Standardizer | None) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if isinstance(model, GLAIBlock) and model.theta_mask is not None:
        tensors.update(sparse_theta.pack(tensors.pop("model.theta"), tensors.pop("model.theta_mask")))
    if standardizer is not None:
        d = model.in_features
        for key, tensor in standardizer.tensors().items():
            if tuple(tensor.shape) != (d,):
                raise ValueError(f"standardizer {key} has shape {tuple(tensor.shape)}, model expects ({d},)")
            tensors[key] = tensor.detach().to("cpu", torch.float32).contiguous()
    return tensors


def save_model(path: str | os.PathLike[str], model: nn.Module, metadata: Mapping[str, Any] | None = None, *,
               standardizer: Standardizer | None = None) -> Path:
    """Write ``model`` (+ standardisation) atomically to one .safetensors file; returns the path.

    ``metadata`` may hold class_names, preprocessing, backbone, summary and any other JSON values; a
    ``Standardizer`` may be passed as ``standardizer=`` or under ``metadata["standardizer"]``.
    """
    metadata = dict(metadata or {})
    given = metadata.pop("standardizer", None)
    if standardizer is None and isinstance(given, Standardizer):
        standardizer = given
    header = _header_metadata(model, metadata, standardizer)
    tensors = _tensors(model, standardizer)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(header, allow_nan=False)})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------- loading

def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse the raw safetensors header: (tensor entries, glai metadata)."""
    if not path.is_file():
        raise ArtifactError(f"model file not found: {path.name}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(9)  # the header length, then the header's opening brace
        length = int.from_bytes(prefix[:8], "little")
        plausible = len(prefix) == 9 and prefix[8:] == b"{" and length <= min(MAX_HEADER_BYTES, size - 8)
        # Sniffed only when the file is not a plausible safetensors file: a header length whose low byte
        # is 0x80 (one in 32 of them, lengths being multiples of 8) starts like a pickle.
        if not plausible and (prefix[:1] == b"\x80" or prefix[:2] == b"PK"):
            raise ArtifactError("this is a pickle / torch.save checkpoint, not a .safetensors model; "
                                "pickled files are never loaded (export with glai_core.artifacts.save_model)")
        if len(prefix) < 8:
            raise ArtifactError(f"not a safetensors file: only {size} bytes (empty or truncated)")
        handle.seek(8)
        if length > MAX_HEADER_BYTES:
            raise ArtifactError("not a safetensors file (its first 8 bytes are not a plausible header "
                                "length)")
        if length > size - 8:
            raise ArtifactError(f"truncated safetensors file: header needs {length} bytes, file has "
                                f"{size - 8}")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError("not a safetensors file (the header is not JSON)") from exc
    if not isinstance(header, dict):
        raise ArtifactError("not a safetensors file (the header is not a JSON object)")
    extra = header.pop("__metadata__", None) or {}
    _check_offsets(header, size - 8 - length)
    if METADATA_KEY not in extra:
        raise ArtifactError("a safetensors file, but without GLAI metadata: not a model exported by this "
                            "service")
    try:
        meta = json.loads(extra[METADATA_KEY])
    except (TypeError, ValueError) as exc:
        raise ArtifactError("the GLAI metadata in the header is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise ArtifactError("the GLAI metadata in the header is not a JSON object")
    return header, meta


def _check_offsets(entries: dict[str, Any], data_bytes: int) -> None:
    end = 0
    for name, entry in entries.items():
        try:
            start, stop = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"malformed header entry for tensor {name!r}") from exc
        end = max(end, stop)
        if not 0 <= start <= stop:
            raise ArtifactError(f"malformed header entry for tensor {name!r}")
    if end > data_bytes:
        raise ArtifactError(f"truncated safetensors file: tensor data needs {end} bytes, file has "
                            f"{data_bytes}")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArtifactError(f"architecture {what} must be a positive integer, got {value!r}")
    return value


def _check_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ArtifactError(f"unknown artifact format version {version!r}; this version of glai reads "
                            f"formats {', '.join(map(str, READABLE_VERSIONS))} (was the model exported by a "
                            "newer release?)")
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or arch.get("kind") not in ("mlp", "glai"):
        raise ArtifactError("the header's architecture is missing or has an unknown kind (expected mlp or "
                            "glai)")
    storage = arch.get("theta_storage")
    if storage is not None and (storage != PACKED or version < 2 or arch["kind"] != "glai"
                                or not arch.get("theta_mask")):
        raise ArtifactError(f"theta_storage {storage!r} is only valid as 'packed' for a masked GLAI block in "
                            "format 2")
    _positive_int(arch.get("in_features"), "in_features")
    _positive_int(arch.get("out_features"), "out_features")
    hidden = arch.get("hidden")
    if not isinstance(hidden, list) or not hidden:
        raise ArtifactError("architecture hidden must be a non-empty list of widths")
    for width in hidden:
        _positive_int(width, "hidden width")
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) != arch["out_features"]:
        raise ArtifactError("class_names must list one name per output")
    backbone = meta.get("backbone")
    if backbone is not None and not (isinstance(backbone, dict) and isinstance(backbone.get("name"), str)):
        raise ArtifactError("the header's backbone must be null or an object with a name")
    return arch


def _empty_model(arch: dict[str, Any]) -> nn.Module:
    """The right module with meta tensors: shapes only, nothing allocated, filled by load_state_dict."""
    with torch.device("meta"):
        structure = StructuralMLP(arch["in_features"], arch["hidden"], arch["out_features"])
        if arch["kind"] == "mlp":
            return structure
        block = GLAIBlock(structure)
        if arch.get("theta_mask"):
            block.set_theta_mask(torch.ones(block.theta.shape))
        return block


def _expected_tensors(model: nn.Module, arch: dict[str, Any], meta: dict[str, Any]) -> dict[str, tuple]:
    """Tensor name -> shape; ``()`` with a ``None`` entry is a 1-D tensor of any length (packed values)."""
    expected: dict[str, Any] = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    if arch.get("theta_storage") == PACKED:
        shape = expected.pop("model.theta")
        del expected["model.theta_mask"]
        expected[sparse_theta.BITS] = (sparse_theta.packed_bytes(shape),)
        expected[sparse_theta.VALUES] = (None,)
    if (meta.get("preprocessing") or {}).get("standardize"):
        expected.update({key: (arch["in_features"],) for key in _PREPROCESS_KEYS})
    return expected


def _compare(entries: dict[str, Any], expected: dict[str, tuple]) -> None:
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    if missing:
        raise ArtifactError(f"the model file lacks tensors {', '.join(missing[:5])} required by its "
                            "architecture")
    if unexpected:
        raise ArtifactError(f"the model file has tensors its architecture does not use: "
                            f"{', '.join(unexpected[:5])}")
    for name, shape in expected.items():
        entry = entries[name]
        dtypes = _BIT_DTYPES if name == sparse_theta.BITS else _DTYPES
        if entry.get("dtype") not in dtypes:
            raise ArtifactError(f"tensor {name} has unsupported dtype {entry.get('dtype')!r}")
        found = tuple(entry.get("shape", ()))
        if shape == (None,):  # any length, checked against the bits once they are read
            shape = found if len(found) == 1 else (0, 0)
        if found != shape:
            raise ArtifactError(f"tensor {name} has shape {found}, its architecture needs {shape}")
        start, stop = entry["data_offsets"]
        if math.prod(shape) * dtypes[entry["dtype"]].itemsize != stop - start:
            raise ArtifactError(f"tensor {name}: byte length does not match its shape")


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated GLAI metadata of a model file, without reading any tensor."""
    _, meta = _read_header(Path(path))
    _check_metadata(meta)
    return meta


def load_artifact(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Artifact:
    """Validate the header, then load model, metadata and standardiser (in eval mode)."""
    path = Path(path)
    entries, meta = _read_header(path)
    arch = _check_metadata(meta)
    model = _empty_model(arch)
    _compare(entries, _expected_tensors(model, arch, meta))
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ArtifactError(f"the model file is corrupted: {exc}") from exc
    standardizer = None
    if all(key in tensors for key in _PREPROCESS_KEYS):
        standardizer = Standardizer.from_tensors({key: tensors.pop(key) for key in _PREPROCESS_KEYS})
    if arch.get("theta_storage") == PACKED:
        assert isinstance(model, GLAIBlock)
        try:
            values, bits = tensors.pop(sparse_theta.VALUES), tensors.pop(sparse_theta.BITS)
            theta, mask = sparse_theta.unpack(values, bits, tuple(model.theta.shape))
        except ValueError as exc:
            raise ArtifactError(f"the model file is corrupted: {exc}") from exc
        tensors.update({"model.theta": theta, "model.theta_mask": mask})
    state = {key.removeprefix("model."): value for key, value in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    return Artifact(model=model, metadata=meta, standardizer=standardizer)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model, metadata) as exported; the standardiser tensors are in ``load_artifact``."""
    artifact = load_artifact(path, device)
    return artifact.model, artifact.metadata
