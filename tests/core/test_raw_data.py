"""Raw upload loaders: good text tables and image zips parse; every bad case is a DataError that says why."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from glai_core.data import DataError
from glai_core.raw_data import ZipLimits, load_image_zip, load_text_table


def _png(color: tuple[int, int, int] = (200, 30, 30), size: int = 8, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), color if mode == "RGB" else color[0]).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes | None], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """``None`` content writes a directory entry."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            if data is None:
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def _error(fn: Callable[..., object], *args: object, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------------ text tables


def test_text_csv_parses(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        'text,label,extra\n"hello, world",pos,1\nbad day,neg,2\n"multi\nline",10,3\nok,2,4\n',
        encoding="utf-8",
    )
    data = load_text_table(path, "csv", "text", "label")
    assert data.texts == ["hello, world", "bad day", "multi\nline", "ok"]
    assert data.class_names == ["10", "2", "neg", "pos"]
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [3, 2, 0, 1]


def test_integer_labels_sort_numerically_and_parquet_parses(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"t": ["a", "b", "c", "d"], "y": [10, 2, 2, 1]}).to_parquet(path)
    data = load_text_table(path, "parquet", "t", "y")
    assert data.class_names == ["1", "2", "10"] and data.labels.tolist() == [2, 1, 1, 0]


def test_missing_column_lists_available(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("review,stars\ngood,5\nbad,1\n")
    err = _error(load_text_table, path, "csv", "text", "stars")
    assert err.field == "text_column" and "'review'" in err.message and "'stars'" in err.message
    err = _error(load_text_table, path, "csv", "review", "label")
    assert err.field == "label_column" and "available columns" in err.message


def test_blank_texts_are_counted_with_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,label\nfine,a\n,b\n   ,a\nok,b\n\t,a\n")
    err = _error(load_text_table, path, "csv", "text", "label")
    assert err.field == "text_column"
    assert "3 of 5 rows" in err.message and "rows 2, 3, 5" in err.message


def test_missing_labels_non_utf8_one_class_and_bad_format(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,label\nfine,a\nalso fine,\n")
    err = _error(load_text_table, path, "csv", "text", "label")
    assert err.field == "label_column" and "rows 2" in err.message

    path.write_bytes("text,label\ncaf\u00e9,a\nbar,b\n".encode("latin-1"))
    err = _error(load_text_table, path, "csv", "text", "label")
    assert err.field == "file" and "UTF-8" in err.message and "0xe9" in err.message

    path.write_text("text,label\none,a\ntwo,a\n")
    err = _error(load_text_table, path, "csv", "text", "label")
    assert "at least 2 classes" in err.message and "'a'" in err.message

    path.write_text("")
    assert "empty" in _error(load_text_table, path, "csv", "text", "label").message
    assert _error(load_text_table, path, "xlsx", "text", "label").field == "file_format"
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert "Parquet" in _error(load_text_table, tmp_path / "bad.parquet", "parquet", "t", "y").message


def test_non_string_text_column_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"t": [1.5, 2.5], "y": ["a", "b"]}).to_parquet(path)
    assert "must hold text" in _error(load_text_table, path, "parquet", "t", "y").message


# ------------------------------------------------------------------------------------------- image zips


def test_folder_per_class_zip_parses(tmp_path: Path) -> None:
    path = _zip(
        tmp_path / "d.zip",
        {
            "mydata/": None,
            "mydata/cat/": None,
            "mydata/cat/1.png": _png((255, 0, 0)),
            "mydata/cat/sub/2.PNG": _png((250, 0, 0)),
            "mydata/dog/3.png": _png((0, 0, 255), mode="L"),
            "mydata/.DS_Store": b"junk",
            "__MACOSX/mydata/._1.png": b"junk",
        },
    )
    data = load_image_zip(path)
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1]
    assert data.files == ["mydata/cat/1.png", "mydata/cat/sub/2.PNG", "mydata/dog/3.png"]
    first = data.images[0]
    assert first.mode == "RGB" and first.size == (8, 8)
    assert data.images.array(2).shape == (8, 8, 3)  # grayscale comes back as RGB
    assert len(data.images[0:2]) == 2 and len(list(data.images)) == 3


def test_labels_csv_zip_parses(tmp_path: Path) -> None:
    path = _zip(
        tmp_path / "d.zip",
        {
            "labels.csv": b"file,label\nimg/a.png,yes\n./img/b.png,no\nc.jpg,yes\n",
            "img/a.png": _png(),
            "img/b.png": _png(),
            "c.jpg": _jpeg(),
        },
    )
    data = load_image_zip(path)
    assert data.class_names == ["no", "yes"]
    assert dict(zip(data.files, data.labels.tolist(), strict=True)) == {
        "c.jpg": 1,
        "img/a.png": 1,
        "img/b.png": 0,
    }


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 6), (10, 200, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def test_labels_csv_problems(tmp_path: Path) -> None:
    base = {"a.png": _png(), "b.png": _png()}
    err = _error(
        load_image_zip, _zip(tmp_path / "1.zip", {"labels.csv": b"file,label\na.png,x\nzz.png,y\n", **base})
    )
    assert "not in the zip" in err.message and "zz.png" in err.message
    err = _error(load_image_zip, _zip(tmp_path / "2.zip", {"labels.csv": b"file,label\na.png,x\n", **base}))
    assert "not listed" in err.message and "b.png" in err.message
    err = _error(load_image_zip, _zip(tmp_path / "3.zip", {"labels.csv": b"name,class\na.png,x\n", **base}))
    assert "'file' and 'label'" in err.message


@pytest.mark.parametrize(
    "name", ["../evil.png", "/etc/evil.png", "c/../../evil.png", "C:/evil.png", "a\\..\\b.png"]
)
def test_zip_slip_paths_are_refused(tmp_path: Path, name: str) -> None:
    path = _zip(tmp_path / "d.zip", {"a/1.png": _png(), "b/1.png": _png(), name: _png()})
    err = _error(load_image_zip, path)
    assert "unsafe path" in err.message and err.field == "file"


def test_symlinks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/1.png", _png())
        link = zipfile.ZipInfo("b/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    assert "symbolic link" in _error(load_image_zip, path).message


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    png = _png()
    path = _zip(tmp_path / "d.zip", {"a/1.png": png, "b/broken.png": png[:40], "b/text.png": b"hello"})
    err = _error(load_image_zip, path)
    assert "b/broken.png" in err.message and "decode" in err.message


def test_oversized_images_are_refused_before_decoding(tmp_path: Path) -> None:
    path = _zip(tmp_path / "d.zip", {"a/1.png": _png(size=4), "b/big.png": _png(size=64)})
    err = _error(load_image_zip, path, ZipLimits(max_pixels=1000))
    assert "b/big.png" in err.message and "64x64" in err.message


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    zeros = b"\0" * (2 * 2**20)  # compresses ~1000:1
    path = _zip(tmp_path / "ratio.zip", {"a/1.png": _png(), "b/zeros.png": zeros})
    err = _error(load_image_zip, path)
    assert "compression ratio" in err.message and "b/zeros.png" in err.message

    path = _zip(tmp_path / "size.zip", {"a/1.png": _png(), "b/2.png": _png()})
    err = _error(load_image_zip, path, ZipLimits(max_file_bytes=50))
    assert "per-file limit" in err.message
    err = _error(load_image_zip, path, ZipLimits(max_total_bytes=len(_png()) + 1))
    assert "exceed" in err.message


def test_members_that_lie_about_their_size_are_refused(tmp_path: Path) -> None:
    """A central directory that declares fewer bytes than the member really inflates to."""
    big = _png(size=32)
    path = _zip(tmp_path / "d.zip", {"a/1.png": _png(), "b/2.png": big})
    raw = bytearray(path.read_bytes())
    entry = raw.rfind(b"PK\x01\x02")  # central directory record of the last member, b/2.png
    struct.pack_into("<I", raw, entry + 24, 10)  # uncompressed size: 10 bytes
    path.write_bytes(bytes(raw))
    err = _error(load_image_zip, path)
    assert "b/2.png" in err.message


def test_too_many_files_empty_classes_and_layout_errors(tmp_path: Path) -> None:
    members = {f"{c}/{i}.png": _png() for c in "ab" for i in range(3)}
    err = _error(load_image_zip, _zip(tmp_path / "many.zip", members), ZipLimits(max_files=5))
    assert "6 entries" in err.message

    err = _error(load_image_zip, _zip(tmp_path / "empty.zip", {**members, "c/": None}))
    assert "without images" in err.message and "c" in err.message

    err = _error(load_image_zip, _zip(tmp_path / "loose.zip", {**members, "stray.png": _png()}))
    assert "top level" in err.message and "stray.png" in err.message

    err = _error(load_image_zip, _zip(tmp_path / "notes.zip", {**members, "a/notes.txt": b"hi"}))
    assert "not images" in err.message and "a/notes.txt" in err.message

    err = _error(load_image_zip, _zip(tmp_path / "one.zip", {"a/1.png": _png(), "a/2.png": _png()}))
    assert "at least 2 classes" in err.message

    (tmp_path / "nozip.zip").write_bytes(b"plain text")
    assert "not a readable zip" in _error(load_image_zip, tmp_path / "nozip.zip").message
    assert "no images" in _error(load_image_zip, _zip(tmp_path / "none.zip", {})).message
