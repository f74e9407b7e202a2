"""SQLAlchemy 2.0 tables: the schema every other package reads and writes through `db` functions.

Ids of jobs, tenants and keys are 32-char hex UUIDs (they appear in object keys and URLs);
chunks, items and images use integer ids. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from db.status import ChunkStatus, DeliveryStatus, ImageStatus, JobStatus, ModelVersionStatus

# Deterministic constraint names so Alembic migrations match on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 32


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def _enum(cls: type[enum.Enum], length: int = 16) -> Enum:
    # Stored as plain strings (no native PG enum): adding a status is a code change (and a wider column when
    # the new value is longer than `length`).
    return Enum(
        cls,
        native_enum=False,
        length=length,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite stores naive text; we re-attach UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass timezone-aware UTC times")
        value = value.astimezone(dt.UTC)
        # SQLite compares timestamps as text: store them all in one zone, without an offset suffix.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


Timestamp = UTCDateTime()


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012 - read by SQLAlchemy, never mutated


class Tenant(Base):
    """A customer account: owns API keys, jobs and a prefix in the object store."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    images_per_day: Mapped[int] = mapped_column(Integer, default=1_000_000)
    max_concurrent_jobs: Mapped[int] = mapped_column(Integer, default=10)
    requests_per_minute: Mapped[int] = mapped_column(Integer, default=600)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    # After a rotation with a grace period, the replaced secret also signs every attempt until this time.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(128))
    previous_webhook_secret_until: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    # The highest-priority queue this tenant's jobs may ask for (interactive > bulk > backfill); operator-set.
    highest_queue: Mapped[str] = mapped_column(String(16), default="bulk", server_default="bulk")
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class ApiKey(Base):
    """An API key; only its SHA-256 is stored, looked up by a short public prefix."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class ModelVersion(Base):
    """An immutable trained generator: config, checkpoint URI, metrics and registry status."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    preset: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str] = mapped_column(String(64), default="")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    categories: Mapped[list[Any]] = mapped_column(JSON, default=list)
    checkpoint_uri: Mapped[str] = mapped_column(String(2048))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), default="")
    data_fingerprint: Mapped[str] = mapped_column(String(128), default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[ModelVersionStatus] = mapped_column(
        _enum(ModelVersionStatus), default=ModelVersionStatus.CANDIDATE
    )
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    promoted_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class Job(Base):
    """One bulk request. Counters are bumped atomically by chunk completion, never recomputed in Python."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_id_idempotency_key"),
        Index("ix_jobs_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_jobs_tenant_id_model_version_id", "tenant_id", "model_version_id"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    # 32: `completed_with_failures` (migration 0007) does not fit the other statuses' 16.
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, 32), default=JobStatus.QUEUED, index=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    output_format: Mapped[str] = mapped_column(String(8), default="png")
    chunk_size: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(16), default="bulk")
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The client's labels (db.job_specs.JobMetadata); the column is "metadata" (a reserved attribute name here).
    job_metadata: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    images_total: Mapped[int] = mapped_column(BigInteger, default=0)
    images_done: Mapped[int] = mapped_column(BigInteger, default=0)
    images_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    images_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_finished: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    # The webhook events this job's client wants (None = every event).
    webhook_events: Mapped[list[Any] | None] = mapped_column(JSON)
    # Generations this job may spend, charged against the tenant's daily quota: images × (1 + max redraws).
    quota_cost: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Days the job is kept once finished (None = kept until deleted); set at submit (db.job_specs.SubmitLimits).
    retention_days: Mapped[int | None] = mapped_column(Integer)
    # When the reaper deletes the job's objects and rows: finished_at + retention_days, set when the job
    # finishes (None while it runs, or when kept until deleted); `now` once a DELETE began.
    expires_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    manifest_key: Mapped[str | None] = mapped_column(String(1024))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class JobItem(Base):
    """One requested line of a job: a category (and optional SKU) with a count of images.

    Its images take the contiguous global indices `[first_index, first_index + count)` of the job.
    """

    __tablename__ = "job_items"
    __table_args__ = (
        UniqueConstraint("job_id", "position", name="uq_job_items_job_id_position"),
        # A packed chunk reads the items of its index range (db.chunks.chunk_items).
        Index("ix_job_items_job_id_first_index", "job_id", "first_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(64))
    class_index: Mapped[int] = mapped_column(Integer)
    sku: Mapped[str | None] = mapped_column(String(128))
    client_item_id: Mapped[str | None] = mapped_column(String(255))
    count: Mapped[int] = mapped_column(Integer)
    first_index: Mapped[int] = mapped_column(BigInteger)
    skipped_existing: Mapped[bool] = mapped_column(Boolean, default=False)


class Chunk(Base):
    """A contiguous range `[start_index, stop_index)` of a job's images, generated by one task.

    It covers one item's images, or several consecutive small items (db.chunk_layout); `item_id` is the item
    of `start_index` (its first item), and `db.chunks.chunk_items` gives every item of the range.

    `attempt` grows by one at every claim; a write is accepted only from the attempt holding the lease.
    """

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("job_id", "start_index", name="uq_chunks_job_id_start_index"),
        Index("ix_chunks_status_lease_expires_at", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("job_items.id", ondelete="CASCADE"))
    start_index: Mapped[int] = mapped_column(BigInteger)
    stop_index: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[ChunkStatus] = mapped_column(_enum(ChunkStatus), default=ChunkStatus.PENDING)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # `attempt` at the last retry: `attempt` itself only ever grows (it is the fencing token), and a retry gives
    # the chunk a fresh budget of `max_attempts` claims counted from here.
    retry_base: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    leased_by: Mapped[str | None] = mapped_column(String(255))
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    images_done: Mapped[int] = mapped_column(Integer, default=0)
    images_failed: Mapped[int] = mapped_column(Integer, default=0)
    images_rejected: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class Image(Base):
    """One generated image: its object key, content hash and provenance. Unique per (job, index)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_images_job_id_index"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(BigInteger)
    category: Mapped[str] = mapped_column(String(64))
    sku: Mapped[str | None] = mapped_column(String(128))
    key: Mapped[str | None] = mapped_column(String(1024))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[ImageStatus] = mapped_column(_enum(ImageStatus))
    error: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    redraws: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer)
    # Indexed: fleet throughput (/metrics, every estimate) reads the last hour of images by created_at.
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow, index=True)


class WebhookDelivery(Base):
    """An outbox row: one event to deliver to one URL, with retry bookkeeping."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class FinalizeWrite(Base):
    """A finalize pass writing a job's manifests (`workers.finalize`): inserted before its store writes, deleted
    in the transaction that finishes the job.

    A row left behind is a finalize that died after writing and before its check: if the job's chunks were
    rerun meanwhile, what it wrote may be stale, written over fresher manifests, and the job may be finished
    already, so no other finalize would come. The reaper has the manifests of such a job written again.
    """

    __tablename__ = "finalize_writes"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class ReviewDecision(enum.StrEnum):
    """A person's verdict on a delivered image, given in the console."""

    APPROVED = "approved"
    REJECTED = "rejected"


class ImageReview(Base):
    """The latest review decision on one delivered image of a job: who (the API key's id and name), what, when.

    One row per (job, index): deciding again replaces the decision (the row keeps the latest). Not a foreign
    key to `images`: a review names the image the way the manifest does, by job and index.
    """

    __tablename__ = "image_reviews"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_image_reviews_job_id_index"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(BigInteger)
    decision: Mapped[ReviewDecision] = mapped_column(_enum(ReviewDecision))
    reviewer_key_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    reviewer_name: Mapped[str] = mapped_column(String(64), default="")
    note: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class ConsoleSession(Base):
    """A signed-in console browser: the SHA-256 of its cookie token, the API key it signed in with, its CSRF token.

    The cookie carries only a random token; the API key itself is never stored in it or here.
    """

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(Timestamp, index=True)
