"""Exported model files: exact round trips, and clean refusals of anything that is not one."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glai_core.artifacts import (
    FORMAT_VERSION,
    ArtifactError,
    load_artifact,
    load_model,
    read_metadata,
    save_model,
)
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.preprocess import Standardizer

D, M = 9, 4


def _mlp(hidden: list[int], seed: int = 0) -> StructuralMLP:
    torch.manual_seed(seed)
    return StructuralMLP(D, hidden, M)


def _glai(hidden: list[int], masked: bool = False) -> GLAIBlock:
    block = GLAIBlock.from_structure(_mlp(hidden))
    with torch.no_grad():
        block.theta.add_(0.01 * torch.randn_like(block.theta))  # no longer equal to S: theta must be saved
    if masked:
        block.set_theta_mask((torch.rand_like(block.theta) > 0.4).float())
    return block


def _inputs() -> torch.Tensor:
    return torch.randn(256, D, generator=torch.Generator().manual_seed(1))


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _rewrite(path: Path, header: dict, data: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def _rewrite_glai(path: Path, **changes: object) -> None:
    header, data = _header(path)
    meta = json.loads(header["__metadata__"]["glai"])
    meta.update(changes)
    header["__metadata__"]["glai"] = json.dumps(meta)
    _rewrite(path, header, data)


# ------------------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("make", [
    lambda: _mlp([16]),
    lambda: _mlp([12, 7]),
    lambda: _glai([10]),
    lambda: _glai([6, 5]),
    lambda: _glai([6, 5], masked=True),
], ids=["mlp-1", "mlp-2", "glai-1", "glai-2", "glai-2-masked"])
def test_roundtrip_reproduces_predictions_bit_for_bit(make, tmp_path: Path) -> None:
    model = make().eval()
    path = save_model(tmp_path / "m.safetensors", model, {"class_names": ["a", "b", "c", "d"]})
    loaded, meta = load_model(path)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert type(loaded) is type(model) and not loaded.training
    packed = isinstance(model, GLAIBlock) and model.theta_mask is not None  # sparse Theta: format 2
    assert meta["format_version"] == (2 if packed else 1) and meta["class_names"] == ["a", "b", "c", "d"]
    assert meta["architecture"]["hidden"] == model.hidden
    if isinstance(model, GLAIBlock):
        assert not any(p.requires_grad for p in loaded.structure.parameters())
        assert loaded.theta.requires_grad
        assert (loaded.theta_mask is None) == (model.theta_mask is None)
        if model.theta_mask is not None:
            assert torch.equal(loaded.theta_mask, model.theta_mask)


def test_standardizer_and_metadata_travel_with_the_model(tmp_path: Path) -> None:
    scaler = Standardizer(torch.randn(D), torch.rand(D) + 0.5)
    summary = {"glai_accuracy": 0.91, "speedup": float("nan"), "pruned": {0.5: 0.9}}
    metadata = {"class_names": ["w", "x", "y", "z"], "summary": summary, "backbone": "minilm", "job_id": 17}
    path = save_model(tmp_path / "m.safetensors", _glai([8]), metadata, standardizer=scaler)
    artifact = load_artifact(path)
    assert torch.equal(artifact.standardizer.mean, scaler.mean)
    assert torch.equal(artifact.standardizer.std, scaler.std)
    meta = artifact.metadata
    assert meta["preprocessing"]["standardize"] is True
    assert meta["summary"] == {"glai_accuracy": 0.91, "speedup": None, "pruned": {"0.5": 0.9}}
    assert meta["backbone"] == {"name": "minilm", "preprocessing": {}} and meta["job_id"] == 17
    assert read_metadata(path) == meta


def test_standardizer_inside_metadata_is_accepted(tmp_path: Path) -> None:
    scaler = Standardizer(torch.zeros(D), torch.full((D,), 2.0))
    path = save_model(tmp_path / "m.safetensors", _mlp([4]), {"standardizer": scaler})
    artifact = load_artifact(path)
    assert torch.equal(artifact.standardizer.std, scaler.std) and "standardizer" not in artifact.metadata
    assert artifact.metadata["class_names"] == ["0", "1", "2", "3"]


def test_without_standardizer_there_are_no_preprocess_tensors(tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.safetensors", _mlp([4]))
    header, _ = _header(path)
    assert not any(key.startswith("preprocess.") for key in header)
    assert load_artifact(path).standardizer is None


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, _mlp([4], seed=0))
    save_model(path, _mlp([4], seed=1))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert torch.equal(load_model(path)[0].layers[0].weight, _mlp([4], seed=1).layers[0].weight)


def test_save_refuses_wrong_class_name_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 class names for 4 outputs"):
        save_model(tmp_path / "m.safetensors", _mlp([4]), {"class_names": ["a", "b", "c"]})
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- refusals

def _saved(tmp_path: Path) -> Path:
    return save_model(tmp_path / "m.safetensors", _glai([6, 5]), {}, standardizer=Standardizer.identity(D))


def test_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(pickle.dumps({"theta": [1, 2, 3]}))
    with pytest.raises(ArtifactError, match="pickle"):
        load_model(path)


def test_header_length_that_starts_like_a_pickle_still_loads(tmp_path: Path) -> None:
    """A header length with low byte 0x80 puts the pickle opcode first: the file is still a model."""
    model = _mlp([8]).eval()
    for pad in range(0, 64):  # the metadata's length moves the header length in steps of 8
        path = save_model(tmp_path / "m.safetensors", model, {"note": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    assert read_metadata(path)["note"].startswith("x")
    loaded, _ = load_model(path)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_torch_save_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(_mlp([4]).state_dict(), path)
    with pytest.raises(ArtifactError, match="torch.save"):
        load_model(path)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty or truncated"),
    (b"\x01\x02\x03", "empty or truncated"),
    (b"hello world, this is not a model" * 10, "not a plausible header length"),
    (struct.pack("<Q", 20) + b"{not json at all!!!}", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_garbage_is_refused(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match=message):
        load_model(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(ArtifactError, match="truncated"):
        load_model(path)
    path.write_bytes(raw[:30])
    with pytest.raises(ArtifactError, match="truncated"):
        load_model(path)


def test_plain_safetensors_without_glai_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ArtifactError, match="without GLAI metadata"):
        load_model(path)


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _rewrite_glai(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError, match=f"unknown artifact format version {FORMAT_VERSION + 1}"):
        load_model(path)


@pytest.mark.parametrize(("architecture", "message"), [
    ({"kind": "transformer"}, "unknown kind"),
    ({"hidden": []}, "non-empty list"),
    ({"in_features": -3}, "in_features must be a positive integer"),
    ({"hidden": [6, 4]}, "has shape"),
    ({"theta_mask": True}, "lacks tensors model.theta_mask"),
    ({"theta_storage": "packed"}, "only valid as 'packed' for a masked GLAI block in format 2"),
    ({"kind": "mlp"}, "lacks tensors model.layers.0.bias"),
])
def test_header_that_does_not_match_the_tensors_is_refused(architecture: dict, message: str,
                                                          tmp_path: Path) -> None:
    path = _saved(tmp_path)
    arch = read_metadata(path)["architecture"]
    _rewrite_glai(path, architecture={**arch, **architecture})
    with pytest.raises(ArtifactError, match=message):
        load_model(path)


def test_missing_tensor_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    header, data = _header(path)
    del header["model.theta"]
    _rewrite(path, header, data)
    with pytest.raises(ArtifactError, match="lacks tensors model.theta"):
        load_model(path)


def test_wrong_shape_and_dtype_in_the_tensor_table_are_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    header, data = _header(path)
    header["preprocess.mean"]["shape"] = [D + 1]
    _rewrite(path, header, data)
    with pytest.raises(ArtifactError, match=r"preprocess.mean has shape \(10,\)"):
        load_model(path)
    path = _saved(tmp_path)
    header, data = _header(path)
    header["model.bias"]["dtype"] = "I64"
    _rewrite(path, header, data)
    with pytest.raises(ArtifactError, match="unsupported dtype"):
        load_model(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        load_model(tmp_path / "nothing.safetensors")
