"""/v1/datasets: upload (multipart, streamed), built-ins, list, read, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import DbDep, OwnerDep, ServicesDep
from api.errors import ApiError
from api.presenters import dataset_created, dataset_out
from api.routes.common import errors
from api.schemas import BuiltinDatasetCreate, DatasetCreated, DatasetList, DatasetOut
from api.services import datasets, uploads

router = APIRouter(prefix="/datasets", tags=["datasets"])
CURSOR_DOC = "`next_cursor` of the previous page."

UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "The data. kind `features`: `.npz` (arrays X, y and optionally X_val, "
                                "y_val), `.csv` or `.parquet` (one row per sample). kind `text`: `.csv` "
                                "(UTF-8) or `.parquet` with a text and a label column. kind `images`: a "
                                "`.zip` with one folder per class (`cat/1.png`, `dog/2.jpg`; one wrapping "
                                "folder is fine) or a `labels.csv` (columns file,label) at its root. "
                                "Streamed; at most GLAI_MAX_UPLOAD_BYTES."},
        "name": {"type": "string", "maxLength": 256, "description": "Display name (default: file name)."},
        "label_column": {"type": "string",
                         "description": "csv/parquet: the column holding the class (features: default a "
                                        "single column named label/y/target/class; text: default `label`). "
                                        "Not used for image zips."},
        "text_column": {"type": "string", "default": "text",
                        "description": "kind `text`: the column holding the texts."},
        "kind": {"type": "string", "enum": sorted(datasets.INGESTERS), "default": "features",
                 "description": "What the file holds. `features`: numeric features per sample. `text`: raw "
                                "texts, embedded by the `minilm` backbone (384 features). `images`: raw "
                                "images, embedded by the `efficientnet-lite0` backbone (1280 features). "
                                "Text and images are checked in full at upload (empty texts, missing "
                                "labels, unreadable images, unsafe zip paths are a 422) and embedded once "
                                "by the first job, then cached."},
        "format": {"type": "string", "enum": sorted({f for formats in datasets.FORMATS.values()
                                                     for f in formats.values()}),
                   "description": "Overrides the format guessed from the file name's extension."},
    }}}}}}


@router.post("", status_code=201, response_model=DatasetCreated, summary="Upload a dataset",
             openapi_extra=UPLOAD_BODY, responses=errors(400, 413, 415, 422))
async def upload_dataset(request: Request, services: ServicesDep, db: DbDep,
                         owner: OwnerDep) -> DatasetCreated:
    """Streams the file to disk (hashing it on the way), validates it, stores canonical arrays (or, for
    text and images, the raw upload) under `datasets/<id>/` and only then records the dataset. A rejected
    upload leaves nothing behind. For text and images `n_features` is the backbone's output dimension.
    `duplicate_of` names your datasets that hold the same file (same `sha256`)."""
    settings = services.settings
    tmp_dir = settings.data_dir / "tmp"
    headers = request.headers
    form = await uploads.receive_form(headers.get("content-type"), headers.get("content-length"),
                                      request.stream(), tmp_dir, settings.max_upload_bytes)
    try:
        if form.file_path is None:
            raise ApiError(422, "no file in the upload: send it in the multipart field 'file'", "file")
        kind = form.fields.get("kind") or "features"
        file_format = datasets.resolve_format(kind, form.filename, form.fields.get("format") or None)
        name = (form.fields.get("name") or form.filename or "dataset").strip()
        if len(name) > 256:
            raise ApiError(422, "name is longer than 256 characters", "name")
        spec = datasets.UploadSpec(name=name, kind=kind, file_format=file_format,
                                   label_column=form.fields.get("label_column") or None, fields=form.fields,
                                   limits=datasets.UploadLimits(
                                       max_columns=settings.max_columns,
                                       max_decompressed_bytes=settings.resolved_max_decompressed_bytes,
                                       owner_quota_bytes=settings.max_owner_storage_bytes))
        row = await run_in_threadpool(datasets.create_from_upload, db, services.storage, tmp_dir, owner,
                                      form.file_path, spec, form.sha256, form.size_bytes)
    finally:
        form.cleanup()
    return dataset_created(row, await run_in_threadpool(datasets.duplicates_of, db, row))


@router.post("/builtin", status_code=201, response_model=DatasetCreated, summary="Add a built-in dataset",
             responses=errors(413, 422))
def builtin_dataset(body: BuiltinDatasetCreate, services: ServicesDep, db: DbDep,
                    owner: OwnerDep) -> DatasetCreated:
    """Materialises a bundled dataset (digits, mnist1d, ...) as one of your datasets; no download.
    `duplicate_of` names the same built-in (and seed) added before."""
    row = datasets.create_builtin(db, services.storage, services.settings.data_dir / "tmp", owner, body.name,
                                  body.seed, body.display_name, services.settings.max_owner_storage_bytes)
    return dataset_created(row, datasets.duplicates_of(db, row))


@router.get("", response_model=DatasetList, summary="List your datasets", responses=errors(422))
def list_datasets(db: DbDep, owner: OwnerDep,
                  limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
                  cursor: Annotated[str | None, Query(description=CURSOR_DOC)] = None) -> DatasetList:
    rows, next_cursor = datasets.list_owned(db, owner, limit, cursor)
    return DatasetList(items=[dataset_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetOut, summary="Get a dataset", responses=errors(404))
def get_dataset(dataset_id: str, db: DbDep, owner: OwnerDep) -> DatasetOut:
    return dataset_out(datasets.get_owned(db, owner, dataset_id))


@router.delete("/{dataset_id}", status_code=204, summary="Delete a dataset", responses=errors(404, 409))
def delete_dataset(dataset_id: str, services: ServicesDep, db: DbDep, owner: OwnerDep) -> Response:
    """Refused (409) while any job refers to the dataset: delete those jobs first."""
    datasets.delete(db, services.storage, owner, dataset_id)
    return Response(status_code=204)
