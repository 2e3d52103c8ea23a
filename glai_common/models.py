"""The database schema (SQLAlchemy 2). Alembic owns it: migrations are generated from these classes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class ApiKey(Base):
    """A Bearer token; only its SHA-256 is stored. ``owner`` scopes every other row."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_sha256", "owner", "sha256"),)  # the duplicate hint
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16), default="features")  # features | text | images
    source: Mapped[str] = mapped_column(String(16), default="upload")  # upload | builtin
    file_format: Mapped[str] = mapped_column(String(16))  # npz | csv | parquet | zip | builtin
    label_column: Mapped[str | None] = mapped_column(String(256), default=None)
    text_column: Mapped[str | None] = mapped_column(String(256), default=None)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)  # the owner's quota counts it
    n_samples: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    n_classes: Mapped[int] = mapped_column(Integer)
    n_validation: Mapped[int] = mapped_column(Integer, default=0)
    class_names: Mapped[list[Any]] = mapped_column(default=list)
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_owner_created", "owner", "created_at"),
                      Index("ix_jobs_owner_name", "owner", "name"))
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str | None] = mapped_column(String(256), default=None)  # the owner's label, not unique
    tags: Mapped[list[Any]] = mapped_column(default=list, server_default=text("'[]'"))
    # Routing (glai_common.queue): the worker pool and the priority within it.
    queue: Mapped[str] = mapped_column(String(64), default="glai", server_default="glai")
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)  # POSTed on every final state
    # Lineage (issue 17): the job whose frozen structure and weights this one continues; null for the rest.
    parent_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"),
                                                      default=None, index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    phase: Mapped[str | None] = mapped_column(String(16), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    epoch: Mapped[int | None] = mapped_column(Integer, default=None)
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)  # validated request (TrainConfig + extras)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    failure_kind: Mapped[str | None] = mapped_column(String(16), default=None)
    failure_message: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    time_limit_s: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    transitions: Mapped[list[JobTransition]] = relationship(
        back_populates="job", order_by="JobTransition.id", cascade="all, delete-orphan")
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", order_by="Artifact.name", cascade="all, delete-orphan")
    deliveries: Mapped[list[WebhookDelivery]] = relationship(
        order_by="WebhookDelivery.created_at", cascade="all, delete-orphan", passive_deletes=True)


class JobTransition(Base):
    """Every state or phase change, in order: the job's audit trail."""

    __tablename__ = "job_transitions"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    field: Mapped[str] = mapped_column(String(8))  # state | phase
    from_value: Mapped[str | None] = mapped_column(String(16))
    to_value: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="transitions")


class CurvePoint(Base):
    """One point of a metric series. Append-only; (job, series, phase, step) is unique."""

    __tablename__ = "curve_points"
    __table_args__ = (UniqueConstraint("job_id", "series", "phase", "step", name="uq_curve_point"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    series: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    wall_time: Mapped[float] = mapped_column(Float)  # seconds since the phase started


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifact_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))  # trained | pruned-0.5 | baseline | ...
    storage_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class JobLogLine(Base):
    """The job's log, one row a line; ``end_offset`` is the byte cursor just past this line."""

    __tablename__ = "job_log_lines"
    __table_args__ = (Index("ix_job_log_cursor", "job_id", "end_offset"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    end_offset: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_owner_key"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(256))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeatureCache(Base):
    """Backbone features computed once per (dataset, backbone) and reused by later jobs."""

    __tablename__ = "feature_cache"
    __table_args__ = (UniqueConstraint("dataset_id", "backbone", name="uq_feature_cache"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    backbone: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
    n_features: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookSecret(Base):
    """The key an owner's webhook bodies are signed with (HMAC-SHA256). Kept in clear: signing needs it."""

    __tablename__ = "webhook_secrets"
    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One notification of a job's final state: a row, so it outlives the process that wrote it.

    Created in the transaction that makes the job final; any worker's deliverer sends it
    (``worker.webhooks``), retrying with backoff until ``delivered`` or ``failed``. ``payload`` is the
    exact body, sent unchanged on every attempt; a claimed attempt holds ``lease_expires_at`` so two
    workers never send it at once."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))  # job.succeeded | job.failed | job.cancelled
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class DurationStat(Base):
    """One bucket of a duration histogram shared by every process (``glai_common.metrics_store``): how
    many observations of ``metric`` / ``label`` fell in ``bucket``, and their sum. Counts only grow."""

    __tablename__ = "duration_stats"
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)  # job | phase
    label: Mapped[str] = mapped_column(String(32), primary_key=True)  # final state | phase name
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)  # index into DURATION_BUCKETS
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    sum_s: Mapped[float] = mapped_column(Float, default=0.0)


class WorkerHeartbeat(Base):
    """A worker process that is alive: written by its reaper on every pass (busy or idle)."""

    __tablename__ = "worker_heartbeats"
    worker: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery node name
    queues: Mapped[str] = mapped_column(Text, default="")  # the pools it serves, comma-separated
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)
