"""Datasets: validate an upload or a built-in, store its canonical files, then commit the row.

Order matters for "a 4xx never leaves anything half-stored": parse and validate in a staging
directory, copy the files under ``datasets/<id>/``, and only then commit the row; if anything after the
copy fails the files are removed. Each dataset ``kind`` has an ingester in ``INGESTERS``:

- ``features``: numeric arrays, stored canonically (``X.npy``, ``y.npy``, ``meta.json``).
- ``text``: a CSV/Parquet table with a text and a label column; ``images``: a zip with one folder per class
  (or a ``labels.csv``). Both are validated in full with ``glai_core.raw_data`` (every row, every image
  decoded once) and stored as the raw upload ``raw.<ext>``; the worker embeds them with the kind's frozen
  backbone on the first job and caches the features. Their ``n_features`` is that backbone's output
  dimension (``BACKBONE_FOR_KIND``), known at upload, so jobs can size and limit-check the head at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import ApiError, not_found
from api.services import quota
from api.services.pagination import page, split_page
from glai_common.models import Dataset, FeatureCache, Job, new_id
from glai_common.states import FINAL_STATES
from glai_common.storage import Storage


@dataclass(frozen=True)
class UploadLimits:
    """The deployment's bounds on what an upload may unfold into (``None``: the library's own)."""

    max_columns: int | None = None
    max_decompressed_bytes: int | None = None
    owner_quota_bytes: int = 0  # 0: no quota


@dataclass
class UploadSpec:
    """What the client said about an upload, besides the file itself, and the limits it is read under."""

    name: str
    kind: str
    file_format: str
    label_column: str | None
    fields: dict[str, str] = field(default_factory=dict)  # every form field, for kinds that need more
    limits: UploadLimits = field(default_factory=UploadLimits)


@dataclass
class Ingested:
    """What an ingester leaves in its staging directory and reports about it."""

    n_samples: int
    n_features: int
    n_classes: int
    n_validation: int
    class_names: list[object]
    text_column: str | None = None
    label_column: str | None = None  # the column actually used, when the kind resolves a default


Ingester = Callable[[Path, UploadSpec, Path], Ingested]


# glai_core.data.LimitError.limit -> the setting and the status: too wide is malformed, too big is 413
LIMIT_SETTINGS = {"columns": ("GLAI_MAX_COLUMNS", 422),
                  "decompressed_bytes": ("GLAI_MAX_DECOMPRESSED_BYTES", 413)}


def _data_error(exc: Exception) -> ApiError:
    message = getattr(exc, "message", None) or str(exc) or "the data could not be read"
    setting, status = LIMIT_SETTINGS.get(getattr(exc, "limit", ""), (None, 422))
    if setting:
        message = f"{message} ({setting})"
    return ApiError(status, message, getattr(exc, "field", None) or "file")


def _describe(data: object) -> Ingested:
    x, y = data.x, data.y  # type: ignore[attr-defined]
    x_val = getattr(data, "x_val", None)
    class_names = list(getattr(data, "class_names", None) or sorted({int(v) for v in y}))
    return Ingested(n_samples=int(x.shape[0]), n_features=int(x.shape[1]), n_classes=len(class_names),
                    n_validation=0 if x_val is None else int(x_val.shape[0]),
                    class_names=[_plain(c) for c in class_names])


def _plain(value: object) -> object:
    """numpy scalars -> Python, so class names serialise as JSON."""
    return value.item() if hasattr(value, "item") else value


def ingest_features(path: Path, spec: UploadSpec, staging: Path) -> Ingested:
    """Validate and write the canonical arrays in one pass: an npz upload is streamed member by member,
    a csv/parquet table batch by batch, into staging/X.npy (host memory: one block or batch of rows plus
    the labels, not the data set)."""
    from glai_core import data as gdata

    try:
        loaded = gdata.canonicalize_file(path, spec.file_format, staging, label_column=spec.label_column,
                                         max_columns=spec.limits.max_columns,
                                         max_bytes=spec.limits.max_decompressed_bytes
                                         or gdata.MAX_DECOMPRESSED_BYTES)
    except gdata.DataError as exc:
        raise _data_error(exc) from exc
    except Exception as exc:  # a parser's own error on a malformed file is still the upload's fault
        raise ApiError(422, f"could not read the file as {spec.file_format}: {exc}", "file") from exc
    return _describe(loaded)


# The one frozen backbone each raw kind is embedded with (glai_core.backbones.BACKBONES names and dims).
BACKBONE_FOR_KIND: dict[str, str] = {"text": "minilm", "images": "efficientnet-lite0"}
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"


def _stage_raw(path: Path, staging: Path, file_format: str) -> None:
    """Put the validated upload in staging as ``raw.<format>`` (a hard link when possible: no copy)."""
    target = staging / f"raw.{file_format}"
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)


def _backbone_dim(kind: str) -> int:
    from glai_core.backbones import BACKBONES

    return BACKBONES[BACKBONE_FOR_KIND[kind]]


def ingest_text(path: Path, spec: UploadSpec, staging: Path) -> Ingested:
    """A text table: every row checked now (missing columns, empty texts, missing labels, one class)."""
    from glai_core import raw_data
    from glai_core.data import DataError

    text_column = (spec.fields.get("text_column") or "").strip() or DEFAULT_TEXT_COLUMN
    label_column = (spec.label_column or "").strip() or DEFAULT_LABEL_COLUMN
    try:
        raw = raw_data.load_text_table(path, spec.file_format, text_column, label_column)
    except DataError as exc:
        raise _data_error(exc) from exc
    except Exception as exc:  # a parser's own error on a malformed file is still the upload's fault
        raise ApiError(422, f"could not read the file as {spec.file_format}: {exc}", "file") from exc
    _stage_raw(path, staging, spec.file_format)
    return Ingested(n_samples=len(raw), n_features=_backbone_dim("text"), n_classes=len(raw.class_names),
                    n_validation=0, class_names=list(raw.class_names), text_column=text_column,
                    label_column=label_column)


def ingest_images(path: Path, spec: UploadSpec, staging: Path) -> Ingested:
    """An image zip: hostile-archive checks, then every image decoded once so a bad file is named now."""
    from glai_core import raw_data
    from glai_core.data import DataError

    if spec.label_column:
        raise ApiError(422, "label_column does not apply to an image zip: the class is the image's folder "
                            f"(or the 'label' column of a {raw_data.LABELS_FILE} inside the zip)",
                       "label_column")
    try:
        raw = raw_data.load_image_zip(path, verify=True)
    except DataError as exc:
        raise _data_error(exc) from exc
    except Exception as exc:
        raise ApiError(422, f"could not read the zip: {exc}", "file") from exc
    _stage_raw(path, staging, spec.file_format)
    return Ingested(n_samples=len(raw), n_features=_backbone_dim("images"), n_classes=len(raw.class_names),
                    n_validation=0, class_names=list(raw.class_names))


INGESTERS: dict[str, Ingester] = {"features": ingest_features, "text": ingest_text, "images": ingest_images}
FORMATS: dict[str, dict[str, str]] = {  # kind -> file extension -> file_format
    "features": {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"},
    "text": {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"},
    "images": {".zip": "zip"},
}


def check_backbone(dataset: Dataset, backbone: str | None) -> None:
    """A job's backbone must be the one its dataset's kind is embedded with (none for features)."""
    needed = BACKBONE_FOR_KIND.get(dataset.kind)
    if backbone == needed:
        return
    if needed is None:
        raise ApiError(422, f"dataset '{dataset.id}' holds numeric features, so it takes no backbone "
                            f"(got '{backbone}'); leave backbone null", "backbone")
    got = f"got '{backbone}'" if backbone else "none was given"
    raise ApiError(422, f"dataset '{dataset.id}' holds {dataset.kind}, which needs backbone '{needed}' "
                        f"({got})", "backbone")


def resolve_format(kind: str, filename: str | None, declared: str | None) -> str:
    if kind not in INGESTERS:
        raise ApiError(422, f"unknown dataset kind '{kind}'; one of: {', '.join(sorted(INGESTERS))}", "kind")
    allowed = FORMATS[kind]
    if declared:
        if declared not in set(allowed.values()):
            raise ApiError(422, f"format '{declared}' is not supported for kind '{kind}'; one of: "
                                f"{', '.join(sorted(set(allowed.values())))}", "format")
        return declared
    suffix = Path(filename or "").suffix.lower()
    if suffix not in allowed:
        raise ApiError(422, f"cannot tell the format of '{filename or ''}': use one of "
                            f"{', '.join(sorted(allowed))} (or send the 'format' field)", "file")
    return allowed[suffix]


def _put(storage: Storage, key: str, item: Path) -> None:
    """``storage.put_file`` (for object storage a multipart upload streamed from the staged file), but a
    hard link when staging and a LocalStorage share a file system: a multi-GB X.npy is not copied a second
    time. Still atomic: link to ``.partial``, then rename."""
    local = getattr(storage, "local_path", None)
    if local is not None:
        target = local(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        try:
            tmp.unlink(missing_ok=True)
            os.link(item, tmp)
        except OSError:
            pass
        else:
            tmp.replace(target)
            return
    storage.put_file(key, item)


def _store(db: Session, storage: Storage, staging: Path, row: Dataset, quota_bytes: int,
           field: str) -> Dataset:
    """Move staged files under the row's key (datasets/<id>), then check the quota under the owner's lock
    and commit the row; undo the files if either fails. The files go first, outside the lock: a large
    copy never holds up the owner's other uploads (nor, on SQLite, every other writer)."""
    try:
        for item in sorted(staging.iterdir()):
            if item.is_file():
                _put(storage, f"{row.storage_key}/{item.name}", item)
        quota.reserve(db, row.owner, int(row.stored_bytes or 0), quota_bytes, field)
        db.add(row)
        db.commit()
    except BaseException:
        db.rollback()
        storage.delete_prefix(row.storage_key)
        raise
    return row


def create_from_upload(db: Session, storage: Storage, tmp_dir: Path, owner: str, upload: Path,
                       spec: UploadSpec, sha256: str, size_bytes: int) -> Dataset:
    ident = new_id()
    quota.check(db, owner, 0, spec.limits.owner_quota_bytes, "file")  # already full: read nothing
    with tempfile.TemporaryDirectory(prefix="dataset-", dir=tmp_dir) as staging_dir:
        staging = Path(staging_dir)
        info = INGESTERS[spec.kind](upload, spec, staging)
        stored = quota.staged_bytes(staging)
        quota.check(db, owner, stored, spec.limits.owner_quota_bytes, "file")
        row = Dataset(id=ident, owner=owner, name=spec.name, kind=spec.kind, source="upload",
                      file_format=spec.file_format, label_column=info.label_column or spec.label_column,
                      text_column=info.text_column, sha256=sha256, size_bytes=size_bytes, stored_bytes=stored,
                      n_samples=info.n_samples, n_features=info.n_features, n_classes=info.n_classes,
                      n_validation=info.n_validation, class_names=info.class_names,
                      storage_key=f"datasets/{ident}")
        return _store(db, storage, staging, row, spec.limits.owner_quota_bytes, "file")


def create_builtin(db: Session, storage: Storage, tmp_dir: Path, owner: str, name: str, seed: int,
                   display_name: str | None, quota_bytes: int = 0) -> Dataset:
    from glai_core import data as gdata

    if name not in gdata.BUILTIN_NAMES:
        raise ApiError(422, f"unknown built-in dataset '{name}'; one of: {', '.join(gdata.BUILTIN_NAMES)}",
                       "name")
    try:
        loaded = gdata.builtin(name, seed=seed)
    except gdata.DataError as exc:
        raise _data_error(exc) from exc
    ident = new_id()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dataset-", dir=tmp_dir) as staging_dir:
        staging = Path(staging_dir)
        gdata.save_canonical(staging, loaded)
        info = _describe(loaded)
        digest, size = hashlib.sha256(), 0
        for item in sorted(p for p in staging.iterdir() if p.is_file()):
            with item.open("rb") as handle:
                while block := handle.read(1024 * 1024):
                    digest.update(block)
                    size += len(block)
        quota.check(db, owner, size, quota_bytes, "name")
        row = Dataset(id=ident, owner=owner, name=display_name or name, kind="features", source="builtin",
                      file_format="builtin", label_column=None, sha256=digest.hexdigest(), size_bytes=size,
                      stored_bytes=size,
                      n_samples=info.n_samples, n_features=info.n_features, n_classes=info.n_classes,
                      n_validation=info.n_validation, class_names=info.class_names,
                      storage_key=f"datasets/{ident}")
        return _store(db, storage, staging, row, quota_bytes, "name")


MAX_DUPLICATES = 10


def duplicates_of(db: Session, row: Dataset) -> list[str]:
    """The owner's other datasets with the same sha256, newest first: a hint that the bytes are stored
    already (another owner's are never looked at)."""
    query = (select(Dataset.id).where(Dataset.owner == row.owner, Dataset.sha256 == row.sha256,
                                      Dataset.id != row.id)
             .order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(MAX_DUPLICATES))
    return list(db.scalars(query).all())


def get_owned(db: Session, owner: str, dataset_id: str, field_name: str | None = None) -> Dataset:
    row = db.get(Dataset, dataset_id)
    if row is None or row.owner != owner:  # another owner's id is indistinguishable from a missing one
        raise not_found("dataset", dataset_id, field_name)
    return row


def list_owned(db: Session, owner: str, limit: int, cursor: str | None) -> tuple[list[Dataset], str | None]:
    rows = db.scalars(page(select(Dataset).where(Dataset.owner == owner), Dataset, cursor, limit)).all()
    return split_page(list(rows), limit)


def delete(db: Session, storage: Storage, owner: str, dataset_id: str) -> None:
    """Refuse while any job refers to it (jobs keep pointing at their data); else drop row, then files."""
    row = get_owned(db, owner, dataset_id)
    total, active = db.execute(
        select(func.count(Job.id), func.count(Job.id).filter(Job.state.not_in(FINAL_STATES)))
        .where(Job.dataset_id == dataset_id)).one()
    if total:
        which = f"{active} of them still active" if active else "all finished"
        raise ApiError(409, f"dataset '{dataset_id}' is used by {total} job(s) ({which}); "
                            "delete those jobs first", "dataset_id")
    caches = db.scalars(select(FeatureCache.storage_key).where(FeatureCache.dataset_id == dataset_id)).all()
    db.delete(row)
    db.commit()
    # The row is gone first: a crash here leaves orphan files, never a row pointing at nothing.
    storage.delete_prefix(row.storage_key)
    storage.delete_prefix(f"features/{dataset_id}")
    for key in caches:
        storage.delete_prefix(key)
