"""Every bounded-memory fast path against the plain in-memory reference, on small data.

npz members memory-mapped in place, npz members streamed into canonical files, chunked ``save_canonical``,
the index split and block-wise standardiser fit, and device placement (resident and streamed rows) must
give the same arrays, files and training results as the plain path. One test measures memory: a ~200 MB
upload through the data path in a subprocess that reads its own VmHWM (no timing is asserted anywhere).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from glai_core import streaming
from glai_core.config import TrainConfig
from glai_core.data import (
    DataError,
    LoadedData,
    builtin,
    canonicalize_file,
    load_canonical,
    load_file,
    save_canonical,
    split_indices,
    train_val_split,
)
from glai_core.hooks import Hooks
from glai_core.metrics import GateCache, evaluate_sums
from glai_core.model import StructuralMLP
from glai_core.pipeline import run_pipeline
from glai_core.preprocess import Standardizer
from glai_core.train import DeviceSet, FitSettings, fit
from tests.core.test_data_corpus import CASES

REPO = Path(__file__).resolve().parents[2]


def _data(n: int = 600, d: int = 12, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = rng.normal(size=(n, d)).astype(np.float32) + y[:, None].astype(np.float32)
    return x, y


def _reference(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


# ------------------------------------------------------------------------------------------ npz loading

@pytest.mark.parametrize("variant", ["float32", "float64", "fortran", "images", "big-endian", "with-val"])
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_loading_equals_np_load(tmp_path: Path, variant: str, compressed: bool) -> None:
    x, y = _data()
    arrays: dict[str, np.ndarray] = {"X": x, "y": y}
    if variant == "float64":
        arrays["X"] = x.astype(np.float64) * 1.5
    elif variant == "fortran":
        arrays["X"] = np.asfortranarray(x)
    elif variant == "images":
        arrays["X"] = x.reshape(600, 3, 4)
    elif variant == "big-endian":
        arrays["X"] = x.astype(">f4")
    elif variant == "with-val":
        arrays.update(X_val=x[:50] * 2, y_val=y[:50])
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    loaded = load_file(path, "npz")
    ref = _reference(path)
    np.testing.assert_array_equal(loaded.x, ref["X"].reshape(600, -1).astype(np.float32))
    np.testing.assert_array_equal(loaded.y, ref["y"])
    if variant == "with-val":
        np.testing.assert_array_equal(loaded.x_val, ref["X_val"])
    if not compressed and variant == "float32":
        assert isinstance(loaded.x, np.memmap)  # mapped in place: no copy of the features


def test_stored_member_with_bad_crc_is_refused(tmp_path: Path) -> None:
    x, y = _data()
    path = tmp_path / "d.npz"
    np.savez(path, X=x, y=y)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("X.npy")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len("X.npy") + 200] ^= 0xFF  # one data byte, directory untouched
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupted"):
        load_file(path, "npz")
    with pytest.raises(DataError, match="corrupted"):
        canonicalize_file(path, "npz", tmp_path / "out")


# ------------------------------------------------------------------------------------------ canonical files

def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("variant", ["float32", "float64-strings", "images", "with-val", "fortran"])
@pytest.mark.parametrize("compressed", [False, True])
def test_streamed_canonicalisation_equals_in_memory(tmp_path: Path, variant: str, compressed: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from glai_core import data as gdata

    monkeypatch.setattr(gdata, "STREAM_BLOCK_BYTES", 4096)  # many blocks even on small data
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 4096)
    x, y = _data()
    arrays: dict[str, np.ndarray] = {"X": x, "y": y}
    if variant == "float64-strings":
        arrays = {"X": x.astype(np.float64), "y": np.array(["cat", "dog", "eel"])[y]}
    elif variant == "images":
        arrays["X"] = x.reshape(600, 4, 3)
    elif variant == "with-val":
        arrays.update(X_val=x[:70] - 1, y_val=y[:70])
    elif variant == "fortran":
        arrays["X"] = np.asfortranarray(x)
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    plain = tmp_path / "plain"
    save_canonical(plain, load_file(path, "npz"))
    streamed = canonicalize_file(path, "npz", tmp_path / "streamed")
    assert _files(tmp_path / "streamed") == _files(plain)
    reopened = load_canonical(plain)
    np.testing.assert_array_equal(streamed.x, reopened.x)
    assert streamed.class_names == reopened.class_names


def test_save_canonical_writes_what_np_save_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 1000)
    x, y = _data()
    save_canonical(tmp_path / "a", LoadedData(x=x.astype(np.float64), y=y, class_names=["0", "1", "2"]))
    np.save(tmp_path / "ref.npy", x.astype(np.float64).astype(np.float32))
    assert (tmp_path / "a" / "X.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    # from a memory map (read with pread, not through the map) as well
    save_canonical(tmp_path / "b", load_canonical(tmp_path / "a"))
    assert _files(tmp_path / "b") == _files(tmp_path / "a")


NPZ_CASES = [case for case in CASES if case.file_format == "npz"]


@pytest.mark.parametrize("case", NPZ_CASES, ids=[case.name for case in NPZ_CASES])
def test_streamed_canonicalisation_refuses_what_load_file_refuses(case, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "upload.npz"
    case.build(path)
    with pytest.raises(DataError) as plain:
        load_file(path, "npz", case.label_column, **case.kwargs)
    with pytest.raises(DataError) as streamed:
        canonicalize_file(path, "npz", tmp_path / "out", case.label_column, **case.kwargs)
    assert str(streamed.value) == str(plain.value)
    assert streamed.value.field == plain.value.field


# ------------------------------------------------------------------------------------------ split and fit

def test_split_indices_match_train_val_split_and_fit_is_bit_identical(
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data(n=3000, d=9)
    save_canonical(tmp_path / "ds", LoadedData(x=x, y=y, class_names=["a", "b", "c"]))
    mapped = load_canonical(tmp_path / "ds")
    split = train_val_split(mapped, 0.2, seed=5)
    train_index, val_index = split_indices(mapped.y, 3, 0.2, 5)
    np.testing.assert_array_equal(x[train_index], split.x)
    np.testing.assert_array_equal(x[val_index], split.x_val)
    monkeypatch.setattr(streaming, "FIT_CHUNK", 256)  # many fit chunks, many read blocks
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 9 * 4 * 100)
    fitted = streaming.fit_standardizer(mapped.x, train_index)
    reference = Standardizer.fit(split.x, chunk=256)
    assert torch.equal(fitted.mean, reference.mean) and torch.equal(fitted.std, reference.std)


# ------------------------------------------------------------------------------------------ placement

def _plain_sets(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[DeviceSet, DeviceSet, Standardizer]:
    """What the pipeline did before: copy the split, fit, standardise whole arrays."""
    data = train_val_split(LoadedData(x=x, y=y, class_names=["a", "b", "c"]), 0.2, seed)
    scaler = Standardizer.fit(data.x)
    train = DeviceSet(scaler.apply(torch.as_tensor(data.x)), torch.as_tensor(data.y))
    val = DeviceSet(scaler.apply(torch.as_tensor(data.x_val)), torch.as_tensor(data.y_val))
    return train, val, scaler


def _train(train: DeviceSet, val: DeviceSet, d: int) -> tuple[dict[str, torch.Tensor], list[dict]]:
    torch.manual_seed(0)
    model = StructuralMLP(d, [16], 3)
    result = fit(model, train, val, FitSettings(epochs=3, lr=1e-2, batch_size=64, seed=1), Hooks(), "t")
    return model.state_dict(), result.history


@pytest.mark.parametrize("budget", [None, 0])
def test_placement_trains_exactly_like_the_in_memory_path(tmp_path: Path, budget: int | None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 12 * 4 * 37)
    x, y = _data(n=900)
    save_canonical(tmp_path / "ds", LoadedData(x=x, y=y, class_names=["a", "b", "c"]))
    mapped = load_canonical(tmp_path / "ds")
    placed = streaming.place(mapped.x, mapped.y, None, None, n_classes=3, validation_fraction=0.2, seed=4,
                             device=torch.device("cpu"), budget_bytes=budget)
    assert placed.mode == ("resident" if budget is None else "streamed")
    train, val, scaler = _plain_sets(x, y, seed=4)
    assert torch.equal(placed.standardizer.mean, scaler.mean)
    assert torch.equal(placed.train.x[0:len(train)], train.x)
    index = torch.tensor([5, 1, 700, 3])
    assert torch.equal(placed.train.x[index], train.x[index])
    assert torch.equal(placed.val.x[0:len(val)], val.x)
    assert torch.equal(placed.train.y, train.y) and torch.equal(placed.val.y, val.y)
    weights, history = _train(placed.train, placed.val, 12)
    ref_weights, ref_history = _train(train, val, 12)
    assert [h["val_loss"] for h in history] == [h["val_loss"] for h in ref_history]
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key
    structure = StructuralMLP(12, [8], 3)
    cache, ref_cache = GateCache.build(structure, placed.val.x), GateCache.build(structure, val.x)
    assert all(torch.equal(a, b) for a, b in zip(cache.packed, ref_cache.packed, strict=True))
    assert torch.equal(evaluate_sums(structure, placed.val.x, placed.val.y, 50),
                       evaluate_sums(structure, val.x, val.y, 50))


def test_placement_with_given_validation_split(tmp_path: Path) -> None:
    x, y = _data(n=500)
    xv, yv = _data(n=80, seed=1)
    save_canonical(tmp_path / "ds", LoadedData(x=x, y=y, x_val=xv, y_val=yv, class_names=["a", "b", "c"]))
    mapped = load_canonical(tmp_path / "ds")
    for budget in (None, 0):
        placed = streaming.place(mapped.x, mapped.y, mapped.x_val, mapped.y_val, n_classes=3,
                                 validation_fraction=0.2, seed=0, device=torch.device("cpu"),
                                 budget_bytes=budget)
        scaler = Standardizer.fit(x)
        assert torch.equal(placed.train.x[0:500], scaler.apply(torch.as_tensor(x)))
        assert torch.equal(placed.val.x[0:80], scaler.apply(torch.as_tensor(xv)))
        assert torch.equal(placed.val.y, torch.as_tensor(yv))


def test_host_rows_matmul_and_helpers_match_a_tensor() -> None:
    source = torch.randn(300, 7)
    rows = streaming.HostRows(source, torch.device("cpu"))
    basis = torch.randn(7, 3)
    assert torch.allclose(rows @ basis, source @ basis)
    assert rows.shape == source.shape and len(rows) == 300 and rows.device.type == "cpu"
    assert rows.new_ones(4, 2).shape == (4, 2)
    assert torch.equal(rows.materialize(), source)


# ------------------------------------------------------------------------------------------ memory bound

_MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from glai_core import data, streaming
    path, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    streaming.reset_peak_rss()
    before = streaming.peak_rss_bytes()
    if mode == "load":
        data.save_canonical(out, data.load_file(path, "npz"))
    else:
        data.canonicalize_file(path, "npz", out)
    print(json.dumps({"growth": streaming.peak_rss_bytes() - before}))
""")


def _growth(path: Path, out: Path, mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(out), mode], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=True)
    return int(json.loads(result.stdout.strip().splitlines()[-1])["growth"])


def test_upload_data_path_memory_is_bounded(tmp_path: Path) -> None:
    """~200 MB of features through load_file + save_canonical (stored npz: memory-mapped in place) and
    through the streamed canonicalisation (compressed npz): peak RSS growth well under 2x the data."""
    rows, cols = 65536, 800
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, cols)).astype(np.float32)
    y = np.arange(rows) % 10
    size = x.nbytes
    stored, compressed = tmp_path / "stored.npz", tmp_path / "compressed.npz"
    np.savez(stored, X=x, y=y)
    x[:, 400:] = 0.0  # compressible, so the deflate stream is short and quick to write
    np.savez_compressed(compressed, X=x, y=y)
    del x
    load_growth = _growth(stored, tmp_path / "a", "load")
    stream_growth = _growth(compressed, tmp_path / "b", "stream")
    assert load_growth < 2 * size, (load_growth, size)
    assert stream_growth < 0.5 * size, (stream_growth, size)
    assert (tmp_path / "a" / "X.npy").stat().st_size == (tmp_path / "b" / "X.npy").stat().st_size


def test_a_fortran_ordered_upload_streams_in_bounded_memory(tmp_path: Path) -> None:
    """A Fortran-ordered npz went through load_file (the whole array in memory, then a C-ordered copy):
    a 1 MB file of zeros took the API from 0.7 to 2.7 GB. It is streamed like a C-ordered one now."""
    rows, cols = 65536, 800
    x = np.zeros((rows, cols), dtype=np.float32, order="F")
    x[:, :8] = np.random.default_rng(1).normal(size=(rows, 8))
    y = np.arange(rows) % 10
    path = tmp_path / "fortran.npz"
    np.savez_compressed(path, X=x, y=y)
    assert path.stat().st_size < 0.05 * x.nbytes
    del x
    growth = _growth(path, tmp_path / "out", "stream")
    assert growth < 0.5 * rows * cols * 4, growth
    stored = load_canonical(tmp_path / "out")
    assert stored.x.shape == (rows, cols) and float(stored.x[:, 8:].max()) == 0.0


# ------------------------------------------------------------------------------------------ whole pipeline

def _pipeline_config(budget: int | None) -> TrainConfig:
    return TrainConfig.from_dict({
        "architecture": {"hidden": [32]},
        "structural": {"max_epochs": 3, "min_epochs": 1, "probe_size": 200},
        "quantitative": {"epochs": 2},  # solver auto: the dual closed form on digits (x.T materialised)
        "pruning": {"sparsities": [0.5], "finetune_epochs": 1},
        "baseline": {"max_epochs": 3},
        "device": "cpu",
        "device_memory_budget_bytes": budget,
    })


def test_pipeline_gives_the_same_model_from_memory_memmap_and_streamed_rows(tmp_path: Path) -> None:
    data = builtin("digits")
    save_canonical(tmp_path / "ds", data)
    mapped = load_canonical(tmp_path / "ds")
    runs = {
        "memory": run_pipeline(data, _pipeline_config(None), Hooks()),
        "memmap": run_pipeline(mapped, _pipeline_config(None), Hooks()),
        "streamed": run_pipeline(mapped, _pipeline_config(0), Hooks()),
    }
    keys = ("glai_accuracy", "structure_accuracy", "baseline_accuracy", "pruned", "structural_epochs")
    reference = {k: runs["memory"].summary[k] for k in keys}
    for name, result in runs.items():
        assert {k: result.summary[k] for k in keys} == reference, name
        for key, value in runs["memory"].glai.state_dict().items():
            assert torch.allclose(result.glai.state_dict()[key], value, rtol=0, atol=1e-6), (name, key)
