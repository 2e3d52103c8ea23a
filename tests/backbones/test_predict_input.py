"""`glai predict` input files for backbone models: texts one per line or from a column, images from a
file, a directory or a zip, each with a clear error when the input is unusable."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from glai_client.predict_input import read_inputs
from tests.backbones import corpus


@pytest.fixture(scope="module")
def png() -> bytes:
    return corpus.fashion_images(per_class=1, test_per_class=0)[0]["Bag"][0]


def test_texts_one_per_line_keep_unicode_separators_inside_a_text(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("first text\u2028same text\r\n\n  \nsecond text\n", encoding="utf-8")
    assert read_inputs(path, "text").values == ["first text\u2028same text", "second text"]


def test_texts_from_a_table_column(tmp_path: Path) -> None:
    path = corpus.write_text_csv(tmp_path / "t.csv", [("good", "pos"), ("bad", "neg")], "body", "y")
    assert read_inputs(path, "text", text_column="body").values == ["good", "bad"]
    with pytest.raises(ValueError, match="no column 'text'.*'body'"):
        read_inputs(path, "text")
    blank = tmp_path / "blank.csv"
    blank.write_text('text\n"fine"\n"  "\n')
    with pytest.raises(ValueError, match="1 rows have an empty text"):
        read_inputs(blank, "text")


def test_images_from_a_file_a_directory_and_a_zip(tmp_path: Path, png: bytes) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.png").write_bytes(png)
    (tmp_path / "d" / "sub" / "b.png").write_bytes(png)
    (tmp_path / "d" / "notes.txt").write_text("not an image, skipped")
    found = read_inputs(tmp_path / "d", "image")
    assert found.names == ["a.png", "sub/b.png"] and found.values == [png, png]
    assert read_inputs(tmp_path / "d" / "a.png", "image").names == ["a.png"]
    with zipfile.ZipFile(tmp_path / "i.zip", "w") as archive:
        archive.writestr("x/1.png", png)
        archive.writestr("__MACOSX/x/._1.png", b"junk")
    assert read_inputs(tmp_path / "i.zip", "image").names == ["x/1.png"]


def test_a_damaged_image_is_named(tmp_path: Path, png: bytes) -> None:
    (tmp_path / "ok.png").write_bytes(png)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match="cannot read image 'broken.png'"):
        read_inputs(tmp_path, "image")
