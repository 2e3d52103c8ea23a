"""A small typed client for the GLAI REST API (v1), over httpx.

    from glai_client.client import GlaiClient
    with GlaiClient() as glai:  # GLAI_API_URL / GLAI_API_KEY, else the key `glai serve` wrote: as the CLI
        ds = glai.builtin_dataset("digits")
        job = glai.submit_job(ds["id"], {"architecture": {"hidden": [64]}}, idempotency_key="run-1")
        job = glai.wait(job["id"], on_progress=lambda p: print(p.line()))  # what `glai watch` shows
        glai.download_artifact(job["id"], "trained", "trained.safetensors")
        labels = glai.predict(job["id"], ["a review to classify"], directory="models")  # raw texts too

Responses are the API's JSON as ``TypedDict``s; errors raise ``GlaiError`` with the API's message.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, cast

import httpx

from glai_client import config
from glai_client.progress import FINAL_STATES, JobProgress, job_progress

if TYPE_CHECKING:
    from glai_core.predict import Predictor

DEFAULT_URL = config.DEFAULT_API_URL


class Dataset(TypedDict):
    id: str
    name: str
    kind: str
    source: str
    file_format: str
    label_column: str | None
    text_column: str | None
    sha256: str
    size_bytes: int
    n_samples: int
    n_features: int
    n_classes: int
    n_validation: int
    class_names: list[Any]
    created_at: str


class Artifact(TypedDict):
    name: str
    format: str  # safetensors, onnx or json
    size_bytes: int
    sha256: str
    meta: dict[str, Any]
    created_at: str
    url: str


class Job(TypedDict, total=False):
    id: str
    dataset_id: str
    name: str | None
    tags: list[str]
    state: str
    phase: str | None
    progress: float
    epoch: int | None
    cancel_requested: bool
    failure_kind: str | None
    failure_message: str | None
    time_limit_s: int
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    spec: dict[str, Any]
    summary: dict[str, Any]
    transitions: list[dict[str, Any]]
    artifacts: list[Artifact]
    links: dict[str, str]


class Page(TypedDict):
    items: list[Any]
    next_cursor: str | None


class LogChunk(TypedDict):
    text: str
    next_offset: int


class Prediction(TypedDict):
    artifact: str
    sha256: str
    class_names: list[str]
    classes: list[str]
    probabilities: list[list[float]]


class GlaiError(Exception):
    """An error answer from the API (or no answer at all: ``status`` 0)."""

    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        where = f" [{field}]" if field else ""
        super().__init__(f"{status}: {detail}{where}" if status else detail)
        self.status, self.detail, self.field = status, detail, field


class GlaiClient:
    """``base_url`` and ``api_key`` default exactly as the CLI's: ``GLAI_API_URL`` (else
    http://127.0.0.1:8000) and ``GLAI_API_KEY`` (else the key ``glai serve`` wrote to
    ``$GLAI_DATA_DIR/local_api_key``), so against a local ``glai serve`` nothing needs configuring."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = (base_url or config.api_url()).rstrip("/")
        api_key = api_key or config.api_key()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> GlaiClient:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise GlaiError(0, f"cannot reach the GLAI API at {self.base_url}: {exc}") from exc
        _raise_for_error(response)
        return response

    # ------------------------------------------------------------------ datasets
    def upload_dataset(self, path: str | Path, name: str | None = None, label_column: str | None = None,
                       kind: str | None = None, file_format: str | None = None,
                       text_column: str | None = None) -> Dataset:
        """Upload a file (streamed from disk): kind ``features`` (.npz/.csv/.parquet), ``text``
        (.csv/.parquet with ``text_column`` and ``label_column``) or ``images`` (.zip, a folder per class)."""
        path = Path(path)
        fields = {k: v for k, v in {"name": name or path.name, "label_column": label_column, "kind": kind,
                                     "format": file_format, "text_column": text_column}.items() if v}
        with path.open("rb") as handle:
            response = self._request("POST", "/v1/datasets", data=fields,
                                     files={"file": (path.name, handle, "application/octet-stream")})
        return cast(Dataset, response.json())

    def builtin_dataset(self, name: str, seed: int = 0) -> Dataset:
        return cast(Dataset, self._request("POST", "/v1/datasets/builtin",
                                           json={"name": name, "seed": seed}).json())

    def list_datasets(self, limit: int = 50, cursor: str | None = None) -> Page:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return cast(Page, self._request("GET", "/v1/datasets", params=params).json())

    def get_dataset(self, dataset_id: str) -> Dataset:
        return cast(Dataset, self._request("GET", f"/v1/datasets/{dataset_id}").json())

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # ------------------------------------------------------------------ jobs
    def submit_job(self, dataset_id: str, settings: dict[str, Any] | None = None,
                   idempotency_key: str | None = None) -> Job:
        """``settings``: any of name, tags, architecture, structural, quantitative, pruning, baseline, seed,
        validation_fraction, time_limit_s, backbone (``minilm`` for text datasets, ``efficientnet-lite0``
        for image datasets), parent_job_id + incremental (continue a job's frozen structure), sweep (a
        grid of heads in one pass); see the API docs."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"dataset_id": dataset_id, **(settings or {})}
        return cast(Job, self._request("POST", "/v1/jobs", json=body, headers=headers).json())

    def get_job(self, job_id: str) -> Job:
        return cast(Job, self._request("GET", f"/v1/jobs/{job_id}").json())

    def job_status(self, job_id: str, etag: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
        """The lean status (state, phase, progress, times) and its ETag; ``(None, etag)`` when ``etag`` is
        still current (the server answered 304)."""
        headers = {"If-None-Match": etag} if etag else {}
        response = self._request("GET", f"/v1/jobs/{job_id}/status", headers=headers)
        tag = response.headers.get("ETag")
        if response.status_code == 304:
            return None, tag or etag
        return cast(dict[str, Any], response.json()), tag

    def merge_models(self, job_ids: list[str], method: str = "auto", name: str | None = None,
                     idempotency_key: str | None = None) -> Job:
        """Start a job that merges jobs sharing one frozen structure (``POST /v1/models/merge``); its
        ``trained`` artifact is the model of all their data. ``method``: auto, summed_statistics or refit."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body: dict[str, Any] = {"job_ids": list(job_ids), "method": method}
        if name:
            body["name"] = name
        return cast(Job, self._request("POST", "/v1/models/merge", json=body, headers=headers).json())

    def children(self, job_id: str, limit: int = 200) -> list[Job]:
        """The incremental jobs that continue ``job_id`` (newest first)."""
        page = self._request("GET", "/v1/jobs", params={"parent_job_id": job_id, "limit": limit}).json()
        return cast(list[Job], page["items"])

    def list_jobs(self, state: str | None = None, limit: int = 50, cursor: str | None = None,
                  created_after: str | None = None, created_before: str | None = None,
                  dataset_id: str | None = None, name: str | None = None,
                  tags: list[str] | None = None) -> Page:
        """One page, newest first; the filters combine (``tags``: jobs carrying every one of them)."""
        params: dict[str, Any] = {k: v for k, v in {
            "state": state, "limit": limit, "cursor": cursor, "created_after": created_after,
            "created_before": created_before, "dataset_id": dataset_id, "name": name,
            "tag": list(tags) if tags else None}.items() if v is not None}
        return cast(Page, self._request("GET", "/v1/jobs", params=params).json())

    def iter_jobs(self, state: str | None = None) -> Iterator[Job]:
        cursor: str | None = None
        while True:
            page = self.list_jobs(state=state, limit=200, cursor=cursor)
            yield from page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 1.0,
             on_update: Callable[[Job], None] | None = None,
             on_progress: Callable[[JobProgress], None] | None = None) -> Job:
        """Poll until the job is final (or ``timeout`` seconds pass: TimeoutError).

        ``on_update`` gets each polled job as JSON; ``on_progress`` the same reading `glai watch` draws
        (``glai_client.progress.JobProgress``: state, current phase, fraction, step, every phase's
        fraction; ``.line()`` for one line of text). Each poll is a conditional ``GET .../status``; the
        whole job is fetched only when its status changed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        etag: str | None = None
        job: Job | None = None
        while True:
            # The lean status, revalidated with its ETag: the whole job is read only when it moved.
            status, etag = self.job_status(job_id, etag)
            if status is not None or job is None:
                job = self.get_job(job_id)
                if on_update is not None:
                    on_update(job)
                if on_progress is not None:
                    on_progress(job_progress(job))
            if job["state"] in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> Job:
        return cast(Job, self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def resume_job(self, job_id: str, time_limit_s: int | None = None) -> Job:
        """Queue a failed (e.g. timed-out) job again; it continues from its checkpoints. ``time_limit_s``:
        the running time it gets from now on (default: its own limit again)."""
        body = {} if time_limit_s is None else {"time_limit_s": time_limit_s}
        return cast(Job, self._request("POST", f"/v1/jobs/{job_id}/resume", json=body).json())

    def delete_job(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def webhook_secret(self, rotate: bool = False) -> str:
        """The key job webhooks are signed with (``glai_common.webhooks.verify`` checks a delivery);
        ``rotate`` replaces it first."""
        if rotate:
            return str(self._request("POST", "/v1/webhooks/secret/rotate").json()["secret"])
        return str(self._request("GET", "/v1/webhooks/secret").json()["secret"])

    # ------------------------------------------------------------------ results
    def curves(self, job_id: str, keys: list[str] | None = None, phase: str | None = None,
               max_points: int | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"keys": ",".join(keys) if keys else None, "phase": phase,
                                    "max_points": max_points}.items() if v is not None}
        return cast(dict[str, Any], self._request("GET", f"/v1/jobs/{job_id}/curves", params=params).json())

    def logs(self, job_id: str, offset: int = 0) -> LogChunk:
        response = self._request("GET", f"/v1/jobs/{job_id}/logs", params={"offset": offset})
        return cast(LogChunk, response.json())

    def artifacts(self, job_id: str) -> list[Artifact]:
        return cast(list[Artifact], self._request("GET", f"/v1/jobs/{job_id}/artifacts").json())

    def download_artifact(self, job_id: str, name: str, dest: str | Path,
                          on_progress: Callable[[int, int], None] | None = None) -> Path:
        """Stream an artifact to ``dest``: a file, or a directory (one that exists, or a path ending in a
        separator, created) to put it in under the name the API gives it (``artifact_filename``).
        A partial ``dest.part`` left by an interrupted download is resumed with a Range request."""
        directory = str(dest).endswith(("/", os.sep))
        dest = Path(dest)
        if directory or dest.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            dest = dest / artifact_filename(job_id, name)
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        url = f"/v1/jobs/{job_id}/artifacts/{name}"
        try:
            with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code == 416:  # the part is already complete (or stale): start over
                    part.unlink(missing_ok=True)
                    return self.download_artifact(job_id, name, dest, on_progress)
                if response.status_code >= 400:
                    response.read()
                    _raise_for_error(response)
                mode = "ab" if response.status_code == 206 else "wb"
                done = have if mode == "ab" else 0
                total = done + int(response.headers.get("Content-Length", 0))
                with part.open(mode) as handle:
                    for block in response.iter_bytes(256 * 1024):
                        handle.write(block)
                        done += len(block)
                        if on_progress is not None:
                            on_progress(done, total)
        except httpx.TransportError as exc:
            raise GlaiError(0, f"download interrupted ({exc}); run it again to resume") from exc
        part.replace(dest)
        return dest

    # ------------------------------------------------------------------ prediction (server)
    def predict_remote(self, job_id: str, rows: Any = None, texts: list[str] | None = None,
                       artifact: str = "trained") -> Prediction:
        """Classes and probabilities computed by the API (``POST /v1/jobs/{id}/predict``): nothing is
        downloaded. ``rows``: feature rows (a 2-D array or lists); ``texts``: raw texts for a model on the
        minilm backbone. Requests are bounded (GLAI_MAX_PREDICT_ROWS, GLAI_MAX_REQUEST_BYTES): send large
        inputs in batches, or predict locally with ``predict``."""
        body: dict[str, Any] = {"artifact": artifact}
        if rows is not None:
            body["rows"] = rows.tolist() if hasattr(rows, "tolist") else [list(row) for row in rows]
        if texts is not None:
            body["texts"] = list(texts)
        return cast(Prediction, self._request("POST", f"/v1/jobs/{job_id}/predict", json=body).json())

    # ------------------------------------------------------------------ prediction (local)
    def model_file(self, job_id: str, name: str = "trained", directory: str | Path | None = None) -> Path:
        """The job's exported model on disk: downloaded once into ``directory`` (default
        ``$GLAI_MODEL_DIR`` or ``~/.cache/glai/models``), reused while its sha256 matches the API's."""
        for value in (job_id, name):  # they become path components
            if not value or not all(c.isalnum() or c in "-_" for c in value):
                raise ValueError(f"not a valid job id or artifact name: {value!r}")
        default = Path.home() / ".cache" / "glai" / "models"
        root = Path(directory or os.environ.get("GLAI_MODEL_DIR") or default)
        dest = root / job_id / f"{name}.safetensors"
        artifacts = self.artifacts(job_id)
        expected = next((a["sha256"] for a in artifacts if a["name"] == name), None)
        if expected is None:
            names = ", ".join(a["name"] for a in artifacts) or "none yet"
            raise GlaiError(404, f"job '{job_id}' has no artifact '{name}' (it has: {names})", "name")
        if dest.is_file() and _sha256(dest) == expected:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        return self.download_artifact(job_id, name, dest)

    def predictor(self, job_id: str, name: str = "trained", directory: str | Path | None = None,
                  device: str = "cpu") -> Predictor:
        """A local ``glai_core.predict.Predictor`` for the job's model (see ``model_file``)."""
        from glai_core.predict import Predictor

        return Predictor.load(self.model_file(job_id, name, directory), device=device)

    def predict(self, job_id: str, inputs: Any, name: str = "trained", directory: str | Path | None = None,
                device: str = "cpu") -> list[str]:
        """Class names for ``inputs``, predicted locally. Feature rows for a feature model; for a model
        trained on a frozen backbone also raw inputs: a list of texts (minilm) or of images (paths, encoded
        bytes, PIL images or uint8 arrays; efficientnet-lite0), preprocessed as at training time."""
        return self.predictor(job_id, name, directory, device).predict(inputs)


def artifact_filename(job_id: str, name: str) -> str:
    """The file name the API sends in Content-Disposition: ``<job_id>-<name>.safetensors`` for a model,
    ``<job_id>-<name>`` for a name with its own extension (``trained.onnx``, ``config.json``). Both are
    made of letters, digits, ``-`` and ``_`` (a name also of dots inside it), so it can never leave the
    target directory."""
    for value in (job_id, name.replace(".", "_") if name[:1].isalnum() else name):
        if not value or not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError(f"not a valid job id or artifact name: {value!r}")
    return f"{job_id}-{name}" if "." in name else f"{job_id}-{name}.safetensors"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail, field = str(body.get("detail", response.reason_phrase)), body.get("field")
    except ValueError:
        detail, field = response.text[:500] or response.reason_phrase, None
    raise GlaiError(response.status_code, detail, field)
