"""One settings class, read from ``GLAI_*`` environment variables (or a ``.env`` file).

Defaults give the embedded setup: everything under ``data_dir``, SQLite for the database and kombu's
SQLAlchemy transport over SQLite as the broker. Production sets ``GLAI_DATABASE_URL`` to PostgreSQL and
``GLAI_BROKER_URL`` to Redis.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DECOMPRESSION_FACTOR = 4  # uint8 pixels become float32 features: 4x is what an honest upload may need
QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # no dots: glai_common.queue adds .high / .low


def queue_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a worker pool, or None when it can."""
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        return ("queue names are 1-63 lowercase letters, digits, '-' or '_', starting with a letter or "
                f"digit (got {name!r:.70})")
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLAI_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="Uploads, artifacts, SQLite files, local key.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir.")
    broker_url: str | None = Field(default=None, description="Celery broker; default SQLite in data_dir.")
    storage_dir: Path | None = Field(default=None, description="Artifact root; default data_dir/storage.")
    storage_url: str | None = Field(
        default=None, description="Shared object storage for datasets, features, checkpoints and models: "
        "s3://bucket/prefix (any S3-compatible endpoint, through boto3). Unset: LocalStorage in storage_dir, "
        "which every process must see on one file system.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, moto, another provider); unset: boto3's own "
        "(AWS_ENDPOINT_URL or AWS).")
    s3_region: str | None = Field(default=None, description="S3 region; unset: boto3's (AWS_REGION, ...).")
    s3_access_key_id: str | None = Field(
        default=None, description="S3 access key; unset: boto3's credential chain (AWS_ACCESS_KEY_ID, "
        "~/.aws, an instance role).")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key (with the id).")
    s3_addressing_style: Literal["auto", "path", "virtual"] | None = Field(
        default=None, description="Bucket in the path or in the host name; unset: path when "
        "s3_endpoint_url is set (MinIO, moto), else boto3's choice.")
    s3_multipart_chunk_bytes: int = Field(
        default=16 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3, description="Files larger than this are "
        "uploaded in parts of this size (S3's minimum part is 5 MiB), streamed from disk.")
    staging_dir: Path | None = Field(
        default=None, description="A worker's local copies of stored datasets and features (with "
        "storage_url): default data_dir/staging.")
    staging_max_bytes: int = Field(
        default=32 * 1024**3, ge=1, description="Size bound of the staging cache: least recently used "
        "entries are evicted to stay under it; an entry larger than the bound fails its job.")

    max_upload_bytes: int = 512 * 1024**2
    max_decompressed_bytes: int | None = Field(
        default=None, ge=1, description="Most bytes an upload may unfold into: an npz's decompressed members "
        "and the canonical arrays (float32 features, int64 labels) of an npz or parquet file (413 above). "
        "Default: 4 x max_upload_bytes.")
    max_owner_storage_bytes: int = Field(
        default=64 * 1024**3, ge=0, description="Storage quota per owner: the bytes their datasets take as "
        "stored; an upload or built-in that would pass it is a 413. 0: no quota.")
    max_columns: int = Field(
        default=16_384, ge=2, description="Most columns of a csv/parquet upload, label included (422 above), "
        "checked on its header before any row is read.")
    max_request_bytes: int = 1024**2
    default_job_time_limit_s: int = 6 * 3600
    max_job_time_limit_s: int = 48 * 3600
    max_trainable_params: int = 200_000_000
    max_hidden_layers: int = 4
    max_hidden_width: int = 65_536
    max_epochs: int = 1000
    max_job_memory_bytes: int = Field(
        default=16 * 1024**3, description="Largest estimated peak memory of a job on its device (weights, "
        "grads, Adam moments, a batch of activations, the ridge normal matrix, the dataset); the smallest "
        "worker device's memory minus headroom.")
    max_statistics_bytes: int = Field(
        default=256 * 1024**2, ge=0, description="A job keeps the sufficient statistics of its closed form "
        "(F^T F and F^T Y, float64) for incremental children and merges when they take at most this many "
        "bytes; above it children refit on the union of rows. 0: never kept.")
    max_sweep_heads: int = Field(
        default=64, ge=1, description="Most heads (grid points, GLAI and MLP together) one sweep job may "
        "train.")

    device_memory_budget_bytes: int | None = Field(
        default=None, description="Training data (features + labels of both splits) kept on the GPU only "
        "up to this many bytes; above it batches are gathered from pinned host memory. Default: half the "
        "GPU's memory. On CPU, setting it streams batches from the memory-mapped canonical file instead "
        "of holding a standardised copy in RAM. A job's own config value wins.")

    export_onnx: bool = Field(
        default=True, description="Export an ONNX copy of every model (<name>.onnx, checked against PyTorch "
        "with onnxruntime on held-out rows) next to its .safetensors file.")
    predict_max_rows: int = Field(
        default=10_000, ge=1, description="Most rows or texts one POST /v1/jobs/{id}/predict may send "
        "(413 above, naming the field); its body is also bounded by max_request_bytes.")
    predict_max_text_chars: int = Field(
        default=20_000, ge=1, description="Longest text (characters) a predict request may send.")
    predict_cache_models: int = Field(
        default=8, ge=0, description="Models the API keeps loaded per process for predictions, least "
        "recently used evicted first (0: load for every request).")
    predict_cache_bytes: int = Field(
        default=2 * 1024**3, ge=0, description="Bound on the model files (bytes) kept loaded for "
        "predictions, per API process.")

    db_pool_size: int = Field(default=10, description="Connections kept open per process (PostgreSQL).")
    db_max_overflow: int = Field(default=30, description="Extra connections under load, per process.")
    db_pool_timeout_s: float = Field(
        default=10.0, description="Wait for a free connection before answering 503 (never a silent hang).")

    api_queue_timeout_s: float = Field(
        default=30.0, description="How long a request may wait for one of the API's admission slots "
                                  "(as many as pooled connections) before a 503.")

    auth_enabled: bool = True
    auth_failure_limit: int = Field(
        default=20, ge=0, description="Failed API-key attempts a client (IP address, IPv6 /64) may make "
        "within auth_failure_window_s before its requests get 429 with Retry-After. 0 disables the limit.")
    auth_failure_window_s: float = Field(
        default=60.0, gt=0, description="The sliding window of auth_failure_limit, in seconds.")
    worker_lease_s: int = 60  # a job whose heartbeat is older than this is taken as lost
    max_job_attempts: int = 3
    heartbeat_interval_s: float = 5.0
    reaper_interval_s: float | None = Field(
        default=None, description="Seconds between reaper passes; default half a lease, 1-30 s.")
    requeue_stale_queued_s: float = Field(
        default=300.0, description="A queued job no worker claimed for this long is sent to the queue "
                                   "again (a lost message: API crash before the send, broker restart "
                                   "without persistence). 0 disables.")
    checkpoint_interval_s: float = Field(
        default=10.0, ge=0, description="A phase checkpoints after an epoch once this long has passed since "
        "its last checkpoint, when it finishes and when a stop is requested between epochs; a lost worker's "
        "job resumes from there. 0: after every epoch.")
    cancel_grace_s: float = Field(
        default=30.0, description="A running job not stopped this long after a cancel request is "
                                  "interrupted inside its current step.")
    cancel_force_s: float = Field(
        default=120.0, description="Still not stopped after this long: the worker records 'cancelled' "
                                   "itself and exits its process (its supervisor restarts it). 0 disables.")
    worker_nice: int = Field(
        default=10, ge=0, le=19, description="CPU niceness a worker raises itself to at start (never "
        "lowers). Training yields the CPU to the API and the database when they share a machine, as in "
        "`glai serve`; alone on its machine a worker runs as fast as at 0.")
    worker_health_file: Path | None = Field(
        default=None, description="Touched after each reaper pass of a worker; healthchecks read its age.")

    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["glai"], min_length=1,
        description="Worker pools a job may name in `queue` (comma-separated in the environment); the first "
        "is the default. A worker serves some of them (`glai worker --queues`).")
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhook URLs whose host is (or resolves to) a loopback, private, "
        "link-local or otherwise non-public address; refused by default (a job must not make the service "
        "call into its own network).")
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds a webhook receiver has to answer one delivery attempt.")
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Attempts per webhook delivery before it is recorded as failed.")
    webhook_retry_base_s: float = Field(
        default=5.0, gt=0, description="Wait before the second attempt of a delivery; it doubles after "
        "each failure, up to webhook_retry_max_s.")
    webhook_retry_max_s: float = Field(
        default=3600.0, gt=0, description="Longest wait between two attempts of a delivery.")
    webhook_poll_interval_s: float = Field(
        default=2.0, gt=0, description="How often each worker looks for webhook deliveries that are due.")
    metrics_token: str | None = Field(
        default=None, description="When set, GET /metrics requires `Authorization: Bearer <token>`; unset, "
        "it is open like /healthz (it holds counts only: no ids, names or owners).")

    @field_validator("queues", mode="before")
    @classmethod
    def _queue_list(cls, value: Any) -> Any:
        """``GLAI_QUEUES=gpu-a100,cpu``: a comma-separated list; names are checked by ``queue_name``."""
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list):
            for name in value:
                problem = queue_name_problem(name)
                if problem:
                    raise ValueError(problem)
            return list(dict.fromkeys(value))
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        """Refused at start-up, by name, instead of failing at the first upload."""
        if value:
            from glai_common.storage import parse_storage_url

            parse_storage_url(value)
        return value or None

    @property
    def resolved_staging_dir(self) -> Path:
        return (self.staging_dir or self.data_dir / "staging").resolve()

    @property
    def resolved_max_decompressed_bytes(self) -> int:
        """Tied to the upload limit unless set: a small file must not unfold into an unbounded one."""
        return self.max_decompressed_bytes or DECOMPRESSION_FACTOR * self.max_upload_bytes

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'glai.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "storage").resolve()

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
