"""Read inputs for `glai predict`: feature tables for plain models; raw texts or images for a model trained
on a frozen backbone (its metadata names the backbone, so the same file types mean the right thing).

- features: .npz (array X, or the only array), .csv or .parquet tables;
- texts: .txt (one text per non-empty line), .csv/.parquet (the text column);
- images: one image file, a directory of images (recursively), or a .zip of images.

Image inputs come back with their names (file path relative to the directory, or zip member) so the
prediction lines can say which image they belong to. Images are read as encoded bytes (nothing is
extracted to disk, so member paths cannot escape anywhere) and decoded by the backbone's own
preprocessing, exactly as at training time.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_IMAGE_BYTES = 64 * 2**20  # per image read from a zip (refuses members that inflate beyond it)


@dataclass
class PredictInputs:
    """What to hand to ``Predictor.predict``, plus a name per sample when the input has names."""

    values: Any  # float32 (n, d) array, list[str] texts, or list[bytes] encoded images
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)


def read_features(path: Path, label_column: str | None = None, n_features: int | None = None,
                  class_names: list[str] | None = None, header: bool | None = None) -> np.ndarray:
    """Feature rows: .npz, or a .csv/.parquet table (``glai_client.feature_table``: the CSV header is
    detected unless ``header`` says; a column the model does not take is named)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            key = "X" if "X" in names else "x" if "x" in names else names[0] if len(names) == 1 else None
            if key is None:
                raise ValueError(f"{path.name}: no array named X (found {', '.join(names)})")
            return np.asarray(archive[key], dtype=np.float32)
    if suffix in {".csv", ".parquet", ".pq"}:
        from glai_client.feature_table import read_table_features

        return read_table_features(path, label_column, n_features, class_names, header)
    raise ValueError(f"{path.name}: use a .npz, .csv or .parquet file")


def read_texts(path: Path, text_column: str | None = None) -> list[str]:
    """Texts from a .txt file (one per non-empty line) or a table's text column (default ``text``)."""
    suffix = path.suffix.lower()
    if suffix in {".txt", ""}:
        try:
            # "\n" only: str.splitlines would also split on characters that occur inside texts (U+2028...)
            lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path.name}: not UTF-8 text") from exc
        texts = [line for line in lines if line.strip()]
    elif suffix in {".csv", ".parquet", ".pq"}:
        import pandas as pd

        column = text_column or "text"
        table = (pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig") if suffix == ".csv"
                 else pd.read_parquet(path))
        if column not in table.columns:
            available = ", ".join(repr(str(c)) for c in table.columns) or "none"
            raise ValueError(f"{path.name}: no column {column!r} (available: {available}); "
                             "pass --text-column")
        texts = ["" if v is None else str(v) for v in table[column].tolist()]
        blank = [i for i, text in enumerate(texts, start=1) if not text.strip()]
        if blank:
            raise ValueError(f"{path.name}: {len(blank)} rows have an empty text (rows "
                             f"{', '.join(map(str, blank[:5]))}{', ...' if len(blank) > 5 else ''})")
    else:
        raise ValueError(f"{path.name}: texts come as a .txt file (one per line) or a .csv/.parquet table")
    if not texts:
        raise ValueError(f"{path.name}: no texts found")
    return texts


def _checked(inputs: PredictInputs, where: Path) -> PredictInputs:
    """Read each image's header now, so a damaged file is named (PIL's own error names no file)."""
    import io

    from PIL import Image

    for name, blob in zip(inputs.names, inputs.values, strict=True):
        try:
            with Image.open(io.BytesIO(blob)):
                pass
        except Exception as exc:  # PIL raises several types for damaged or foreign files
            raise ValueError(f"{where.name}: cannot read image {name!r}: not a recognised image") from exc
    return inputs


def read_images(path: Path) -> PredictInputs:
    """Encoded images (bytes) with names, from one image file, a directory or a zip."""
    return _checked(_read_images(path), path)


def _read_images(path: Path) -> PredictInputs:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise ValueError(f"{path}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return PredictInputs([f.read_bytes() for f in files], [str(f.relative_to(path)) for f in files])
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return PredictInputs([path.read_bytes()], [path.name])
    if suffix == ".zip":
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{path.name}: not a readable zip file ({exc})") from exc
        with archive:
            members = sorted((i for i in archive.infolist() if not i.is_dir()
                              and PurePosixPath(i.filename).suffix.lower() in IMAGE_EXTENSIONS
                              and not PurePosixPath(i.filename).name.startswith(".")
                              and PurePosixPath(i.filename).parts[0] != "__MACOSX"), key=lambda i: i.filename)
            if not members:
                raise ValueError(f"{path.name}: the zip holds no images")
            blobs = []
            for info in members:
                with archive.open(info) as handle:
                    blob = handle.read(MAX_IMAGE_BYTES + 1)
                if len(blob) > MAX_IMAGE_BYTES:  # never trust the declared size
                    raise ValueError(f"{path.name}: {info.filename} is over {MAX_IMAGE_BYTES:,} bytes")
                blobs.append(blob)
        return PredictInputs(blobs, [i.filename for i in members])
    raise ValueError(f"{path.name}: images come as an image file, a directory of images or a .zip")


def read_inputs(path: Path, modality: str | None, label_column: str | None = None,
                text_column: str | None = None, *, n_features: int | None = None,
                class_names: list[str] | None = None, header: bool | None = None) -> PredictInputs:
    """Inputs for a model: ``modality`` is the backbone's (``text``/``image``) or None for features.

    A .npz is always read as ready-made features (e.g. embeddings computed elsewhere). ``n_features`` and
    ``class_names`` (the model's) let a feature table's extra column be named in the error.
    """
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if modality is None or (path.is_file() and path.suffix.lower() == ".npz"):
        if path.is_dir():
            raise ValueError(f"{path}: expected a feature file (.npz, .csv, .parquet), got a directory")
        return PredictInputs(read_features(path, label_column, n_features, class_names, header))
    if modality == "text":
        if path.is_dir():
            raise ValueError(f"{path}: expected a .txt/.csv/.parquet file of texts, got a directory")
        return PredictInputs(read_texts(path, text_column))
    if modality == "image":
        return read_images(path)
    raise ValueError(f"unknown input modality {modality!r}")
