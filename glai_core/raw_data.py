"""Loaders for raw uploads that a backbone embeds: text tables (CSV/Parquet) and image zips.

Uploads come from users, so every check ends in a ``DataError`` that says what is wrong and where (column,
row numbers, file name inside the zip). Image zips are treated as hostile: paths that escape the archive,
symlinks, encrypted members, zip bombs (declared sizes, actual sizes and compression ratios) and
decompression-bomb images are refused before anything is decoded in bulk.
"""

from __future__ import annotations

import csv
import io
import stat
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from glai_core.data import DataError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
LABELS_FILE = "labels.csv"
_ROW_EXAMPLES = 5  # how many row numbers / file names an error message lists


# ----------------------------------------------------------------------------------------------- helpers


def _examples(items: Sequence[Any], limit: int = _ROW_EXAMPLES) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def _class_names_and_labels(raw_labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Sorted class names (numerically when every label is an integer) and int64 label indices."""
    unique = set(raw_labels)
    try:
        names = sorted(unique, key=lambda v: (int(v), v))
    except ValueError:
        names = sorted(unique)
    index = {name: i for i, name in enumerate(names)}
    return names, np.fromiter((index[v] for v in raw_labels), dtype=np.int64, count=len(raw_labels))


def _require_two_classes(class_names: list[str], field_name: str) -> None:
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise DataError(f"need at least 2 classes to train a classifier, found {found}", field_name)


# -------------------------------------------------------------------------------------------- text table


@dataclass
class RawTextData:
    texts: list[str]
    labels: np.ndarray  # int64 (n,)
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"the file is not UTF-8 text (invalid byte 0x{exc.object[exc.start]:02x}); save it as UTF-8"


def _read_table(path: Path, file_format: str, text_column: str, label_column: str) -> Any:
    import pandas as pd

    if file_format == "csv":
        try:
            header = pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns.tolist()
        except UnicodeDecodeError as exc:
            raise DataError(_not_utf8(exc), "file") from exc
        except pd.errors.EmptyDataError as exc:
            raise DataError("the file is empty (no header row)", "file") from exc
        except (pd.errors.ParserError, ValueError) as exc:
            raise DataError(f"cannot parse the CSV file: {exc}", "file") from exc
    elif file_format == "parquet":
        import pyarrow.parquet as pq

        try:
            header = pq.read_schema(path).names
        except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
            raise DataError(f"cannot read the Parquet file: {exc}", "file") from exc
    else:
        raise DataError(f"unsupported format {file_format!r}; use csv or parquet", "file_format")

    if text_column == label_column:
        raise DataError("text_column and label_column must be different columns", "label_column")
    available = ", ".join(repr(str(c)) for c in header) or "none"
    for column, field_name in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in header:
            raise DataError(f"column {column!r} not found; available columns: {available}", field_name)

    columns = [text_column, label_column]
    try:
        if file_format == "csv":
            # Everything as strings, empty cells stay "" (not NaN): the checks below report them by row.
            return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        return pd.read_parquet(path, columns=columns)
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8(exc), "file") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"cannot parse the {file_format} file: {exc}", "file") from exc


def load_text_table(path: str | Path, file_format: str, text_column: str, label_column: str) -> RawTextData:
    """Texts and labels from a CSV (UTF-8, header row) or Parquet table.

    Row numbers in errors count data rows from 1 (in a CSV, data row 1 is line 2).
    """
    path = Path(path)
    frame = _read_table(path, file_format, text_column, label_column)
    if len(frame) == 0:
        raise DataError("the table has a header but no rows", "file")

    texts: list[str] = []
    bad_type: list[int] = []
    blank: list[int] = []
    for row, value in enumerate(frame[text_column].tolist(), start=1):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            blank.append(row)
        elif not isinstance(value, str):
            bad_type.append(row)
        elif not value.strip():
            blank.append(row)
        else:
            texts.append(value)
    if bad_type:
        raise DataError(
            f"column {text_column!r} must hold text; {len(bad_type)} rows are not strings "
            f"(rows {_examples(bad_type)})",
            "text_column",
        )
    if blank:
        raise DataError(
            f"{len(blank)} of {len(frame)} rows have an empty or whitespace-only text in column "
            f"{text_column!r} (rows {_examples(blank)}); remove or fill them",
            "text_column",
        )

    raw_labels: list[str] = []
    missing: list[int] = []
    for row, value in enumerate(frame[label_column].tolist(), start=1):
        if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
            missing.append(row)
        else:
            # Integral floats (a Parquet int column with nulls becomes float) name the class "3", not "3.0".
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            raw_labels.append(str(value).strip())
    if missing:
        raise DataError(
            f"{len(missing)} rows have no label in column {label_column!r} (rows {_examples(missing)})",
            "label_column",
        )
    class_names, labels = _class_names_and_labels(raw_labels)
    _require_two_classes(class_names, "label_column")
    return RawTextData(texts=texts, labels=labels, class_names=class_names)


# ------------------------------------------------------------------------------------------- image zips


@dataclass(frozen=True)
class ZipLimits:
    """Bounds on an uploaded image zip; the defaults suit datasets of up to ~100k small images."""

    max_files: int = 200_000
    max_file_bytes: int = 64 * 2**20  # one uncompressed member
    max_total_bytes: int = 2 * 2**30  # all members uncompressed (they are held in memory, encoded)
    max_ratio: float = 100.0  # uncompressed / compressed, checked for members over ratio_min_bytes
    ratio_min_bytes: int = 1 * 2**20
    max_pixels: int = 40_000_000  # per image, checked from the header before decoding


class EncodedImages(Sequence["PILImage"]):
    """The images' encoded bytes, decoded to RGB one at a time on access (memory stays ~ the zip's size)."""

    def __init__(self, names: list[str], blobs: list[bytes], max_pixels: int) -> None:
        self.names = names
        self._blobs = blobs
        self._max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self._blobs)

    @overload
    def __getitem__(self, index: int) -> PILImage: ...

    @overload
    def __getitem__(self, index: slice) -> list[PILImage]: ...

    def __getitem__(self, index: int | slice) -> PILImage | list[PILImage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return _decode(self.names[index], self._blobs[index], self._max_pixels)

    def __iter__(self) -> Iterator[PILImage]:
        for i in range(len(self)):
            yield self[i]

    def array(self, index: int) -> np.ndarray:
        """One image as a uint8 (H, W, 3) array."""
        return np.asarray(self[index], dtype=np.uint8)


@dataclass
class RawImageData:
    images: EncodedImages
    labels: np.ndarray  # int64 (n,)
    class_names: list[str]
    files: list[str] = field(default_factory=list)  # member names, same order as labels

    def __len__(self) -> int:
        return len(self.images)


def _decode(name: str, blob: bytes, max_pixels: int) -> PILImage:
    """Decode one member with PIL, refusing oversized and damaged images by name."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise DataError(
                        f"image {name!r} is {width}x{height} pixels, over the limit of {max_pixels:,}", "file"
                    )
                return img.convert("RGB")
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        raise DataError(f"cannot decode image {name!r}: not a recognised image format", "file") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image {name!r} is too large to decode safely: {exc}", "file") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for damaged files
        raise DataError(f"cannot decode image {name!r}: {exc}", "file") from exc


def _check_member_name(name: str) -> PurePosixPath:
    """Refuse names that could escape an extraction directory (zip slip), even though we never extract."""
    if "\\" in name or "\x00" in name:
        raise DataError(f"unsafe path in zip: {name!r} (backslash or NUL)", "file")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"unsafe path in zip: {name!r} is absolute", "file")
    if ".." in path.parts:
        raise DataError(f"unsafe path in zip: {name!r} contains '..'", "file")
    return path


def _is_junk(path: PurePosixPath) -> bool:
    """OS metadata that zip tools add silently (macOS resource forks, Finder/Explorer files)."""
    return path.parts[0] == "__MACOSX" or path.name.startswith(".") or path.name.lower() == "thumbs.db"


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Read a member, trusting nothing it declares: stop as soon as it exceeds what it claims or ``limit``."""
    allowed = min(info.file_size, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        with zf.open(info) as fh:
            while chunk := fh.read(1 << 20):
                size += len(chunk)
                if size > allowed:
                    raise DataError(
                        f"{info.filename!r} decompresses to more than its declared/allowed size", "file"
                    )
                chunks.append(chunk)
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise DataError(
            f"cannot read {info.filename!r} from the zip (damaged, or its declared size is wrong): {exc}",
            "file",
        ) from exc
    return b"".join(chunks)


def _scan_zip(zf: zipfile.ZipFile, limits: ZipLimits) -> tuple[list[zipfile.ZipInfo], set[str]]:
    """Validate every member's metadata; return the file members (junk dropped) and the directory names."""
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise DataError(
            f"the zip holds {len(infos):,} entries, over the limit of {limits.max_files:,}", "file"
        )
    files: list[zipfile.ZipInfo] = []
    directories: set[str] = set()
    seen: set[str] = set()
    total = 0
    for info in infos:
        path = _check_member_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"symbolic links are not allowed in the zip: {info.filename!r}", "file")
        if info.flag_bits & 0x1:
            raise DataError(f"encrypted members are not supported: {info.filename!r}", "file")
        if info.is_dir():
            if not _is_junk(path):
                directories.add(str(path))
            continue
        if info.filename in seen:
            raise DataError(f"the zip holds {info.filename!r} twice", "file")
        seen.add(info.filename)
        if _is_junk(path):
            continue
        if info.file_size > limits.max_file_bytes:
            raise DataError(
                f"{info.filename!r} is {info.file_size:,} bytes uncompressed, over the per-file limit of "
                f"{limits.max_file_bytes:,}",
                "file",
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise DataError(
                f"{info.filename!r} has compression ratio {ratio:.0f}:1 (limit {limits.max_ratio:.0f}:1); "
                "refusing a possible zip bomb",
                "file",
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise DataError(
                f"the zip's contents exceed {limits.max_total_bytes:,} bytes uncompressed", "file"
            )
        files.append(info)
    return files, directories


def _strip_wrapper(paths: list[PurePosixPath]) -> int:
    """1 when every file sits under one common top folder (a zipped folder), else 0."""
    if paths and all(len(p.parts) >= 2 for p in paths):
        tops = {p.parts[0] for p in paths}
        if len(tops) == 1:
            inner = [PurePosixPath(*p.parts[1:]) for p in paths]
            # Strip only if what remains still has structure (class folders or labels.csv at its root).
            if any(p.name == LABELS_FILE and len(p.parts) == 1 for p in inner) or all(
                len(p.parts) >= 2 for p in inner
            ):
                return 1
    return 0


def _parse_labels_csv(blob: bytes, where: str) -> list[tuple[str, str]]:
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text", "file") from exc
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if "file" not in header or "label" not in header:
        raise DataError(f"{where} needs a header with columns 'file' and 'label', found {header}", "file")
    fi, li = header.index("file"), header.index("label")
    rows: list[tuple[str, str]] = []
    bad: list[int] = []
    for row_number, row in enumerate(reader, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(fi, li) or not row[fi].strip() or not row[li].strip():
            bad.append(row_number)
            continue
        rows.append((row[fi].strip(), row[li].strip()))
    if bad:
        raise DataError(f"{where}: {len(bad)} rows lack a file or a label (rows {_examples(bad)})", "file")
    if not rows:
        raise DataError(f"{where} lists no images", "file")
    return rows


def load_image_zip(path: str | Path, limits: ZipLimits | None = None, verify: bool = True) -> RawImageData:
    """Images and labels from a zip: one folder per class, or a ``labels.csv`` (file,label) at its root.

    A single wrapping folder (zipping ``mydata/``) is accepted. Folder layout: the first folder below the
    root names the class (deeper sub-folders are fine). With ``labels.csv``, ``file`` is the member path
    relative to the folder holding ``labels.csv``; images it does not list are refused, to catch typos.
    ``verify`` decodes every image once so that damaged files are named now rather than mid-embedding.
    """
    limits = limits or ZipLimits()
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a readable zip file: {exc}", "file") from exc
    with zf:
        infos, directories = _scan_zip(zf, limits)
        paths = [PurePosixPath(i.filename) for i in infos]
        strip = _strip_wrapper(paths)
        rel = [PurePosixPath(*p.parts[strip:]) for p in paths]
        by_rel = {str(r): info for r, info in zip(rel, infos, strict=True)}

        labels_info = by_rel.get(LABELS_FILE)
        entries: list[tuple[zipfile.ZipInfo, str]] = []  # (member, class name)
        not_images = [
            i.filename
            for r, i in zip(rel, infos, strict=True)
            if str(r) != LABELS_FILE and r.suffix.lower() not in IMAGE_EXTENSIONS
        ]
        if not_images:
            raise DataError(
                f"{len(not_images)} files are not images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                f"{_examples(not_images)}",
                "file",
            )
        if labels_info is not None:
            rows = _parse_labels_csv(
                _read_member(zf, labels_info, limits.max_file_bytes), labels_info.filename
            )
            listed: set[str] = set()
            unknown: list[str] = []
            for name, label in rows:
                key = str(_check_member_name(name))  # also normalises "./a//b.png" to "a/b.png"
                if key in listed:
                    raise DataError(f"{labels_info.filename} lists {name!r} more than once", "file")
                listed.add(key)
                info = by_rel.get(key)
                if info is None:
                    unknown.append(name)
                else:
                    entries.append((info, label))
            if unknown:
                raise DataError(
                    f"{labels_info.filename} lists {len(unknown)} files that are not in the zip: "
                    f"{_examples(unknown)}",
                    "file",
                )
            unlisted = [str(r) for r in rel if str(r) != LABELS_FILE and str(r) not in listed]
            if unlisted:
                raise DataError(
                    f"{len(unlisted)} images are not listed in {labels_info.filename}: {_examples(unlisted)}",
                    "file",
                )
        else:
            loose = [i.filename for r, i in zip(rel, infos, strict=True) if len(r.parts) < 2]
            if loose:
                raise DataError(
                    f"images must sit in one folder per class (or be listed in a {LABELS_FILE}); "
                    f"{len(loose)} are at the top level: {_examples(loose)}",
                    "file",
                )
            entries = [(i, r.parts[0]) for r, i in zip(rel, infos, strict=True)]
            # A class folder with no images is most likely a mistake in the upload.
            with_images = {cls for _, cls in entries}
            prefix = PurePosixPath(*paths[0].parts[:strip]) if strip else None
            empty = sorted(
                PurePosixPath(d).parts[strip]
                for d in directories
                if len(PurePosixPath(d).parts) == strip + 1
                and (prefix is None or PurePosixPath(d).parts[:strip] == prefix.parts)
                and PurePosixPath(d).parts[strip] not in with_images
            )
            if empty:
                raise DataError(f"class folders without images: {_examples(empty)}", "file")

        if not entries:
            raise DataError("the zip contains no images", "file")
        entries.sort(key=lambda e: e[0].filename)
        names = [info.filename for info, _ in entries]
        blobs = [_read_member(zf, info, limits.max_file_bytes) for info, _ in entries]

    class_names, labels = _class_names_and_labels([cls for _, cls in entries])
    _require_two_classes(class_names, "file")
    images = EncodedImages(names, blobs, limits.max_pixels)
    if verify:
        for i in range(len(images)):
            images[i]  # decodes and discards; raises DataError naming the file
    return RawImageData(images=images, labels=labels, class_names=class_names, files=names)
