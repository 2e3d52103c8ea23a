"""Unstructured-pruned models are exported sparse (kept weights + one bit per path), so they are smaller
than the dense model instead of twice its size, and predict exactly as before; format-1 files with a
dense mask still load, and damaged packed files are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from glai_core.artifacts import ArtifactError, load_model, read_metadata, save_model
from glai_core.model import GLAIBlock, StructuralMLP
from glai_core.prune import prune_unstructured

D, M = 30, 5


def _block() -> GLAIBlock:
    torch.manual_seed(0)
    block = GLAIBlock.from_structure(StructuralMLP(D, [24, 12], M))
    with torch.no_grad():
        block.theta.add_(0.01 * torch.randn_like(block.theta))
    return block.eval()


def _x() -> torch.Tensor:
    return torch.randn(200, D, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_a_pruned_model_is_smaller_than_the_dense_one_and_predicts_the_same(sparsity: float,
                                                                            tmp_path: Path) -> None:
    dense = _block()
    pruned = prune_unstructured(dense, sparsity).eval()
    dense_file = save_model(tmp_path / "dense.safetensors", dense)
    pruned_file = save_model(tmp_path / "pruned.safetensors", pruned)
    theta_bytes = dense.theta.numel() * 4
    expected = theta_bytes * (1 - sparsity) + dense.theta.numel() / 8  # kept float32 values + bits
    saved = dense_file.stat().st_size - pruned_file.stat().st_size
    assert saved == pytest.approx(theta_bytes - expected, rel=0.01)  # before: the mask *added* theta_bytes
    loaded, meta = load_model(pruned_file)
    assert meta["architecture"]["theta_storage"] == "packed" and meta["format_version"] == 2
    assert isinstance(loaded, GLAIBlock) and loaded.theta_mask is not None
    assert torch.equal(loaded.theta_mask, pruned.theta_mask)
    with torch.no_grad():
        assert torch.equal(loaded(_x()), pruned(_x()))


def test_a_format_1_file_with_a_dense_mask_still_loads(tmp_path: Path) -> None:
    pruned = prune_unstructured(_block(), 0.5).eval()
    meta = read_metadata(save_model(tmp_path / "new.safetensors", pruned))
    meta["format_version"] = 1
    del meta["architecture"]["theta_storage"]
    old = tmp_path / "old.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in pruned.state_dict().items()}, str(old),
              metadata={"glai": json.dumps(meta)})
    loaded, _ = load_model(old)
    with torch.no_grad():
        assert torch.equal(loaded(_x()), pruned(_x()))


def test_packed_values_that_do_not_match_the_bits_are_refused(tmp_path: Path) -> None:
    pruned = prune_unstructured(_block(), 0.5).eval()
    meta = read_metadata(save_model(tmp_path / "new.safetensors", pruned))
    tensors = {f"model.{k}": v.contiguous() for k, v in pruned.state_dict().items()
               if k not in ("theta", "theta_mask")}
    keep = pruned.theta_mask.flatten() != 0
    tensors["model.theta_bits"] = torch.from_numpy(np.packbits(keep.numpy()))
    tensors["model.theta_values"] = pruned.theta.flatten()[keep][:-1].contiguous()  # one value short
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={"glai": json.dumps(meta)})
    with pytest.raises(ArtifactError, match="keep .* paths but .* values"):
        load_model(broken)
    tensors["model.theta_bits"] = tensors["model.theta_bits"].to(torch.float32)
    save_file(tensors, str(broken), metadata={"glai": json.dumps(meta)})
    with pytest.raises(ArtifactError, match="model.theta_bits has unsupported dtype"):
        load_model(broken)
