"""Job planning: validate a job spec, insert job + items + chunks in one transaction, publish after commit.

The API (`POST /v1/jobs`) and the CLI (`catalogan generate`) both call `submit_job`. Planning is
O(chunks), never O(images): a 1,000,000-image job is one job row, one row per item and ~4,000 chunk rows
written with bulk INSERTs; image rows appear only as workers finish images.

    spec = parse_job_spec({"model": "fashion-cgan", "items": [{"category": "sneaker", "count": 100}]})
    planned = submit_job(session_factory, spec, tenant_id=t, model_version=mv, publisher=CeleryPublisher(app))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import ConflictError, InvalidKeyError, PlanningError
from db.incremental import ItemKey, JobSettings, find_delivered_items
from db.messaging import QUEUE_NAMES, Publisher
from db.status import ChunkStatus, JobStatus
from db.storage.keys import validate_key_segment
from db.tables import Chunk, Job, JobItem, utcnow

logger = logging.getLogger(__name__)

MAX_SEED = (1 << 63) - 1
MIN_CHUNK_SIZE = 1
MAX_CHUNK_SIZE = 4096
DEFAULT_CHUNK_SIZES: Mapping[str, int] = {"interactive": 32, "bulk": 256, "backfill": 1024}
# `output_format: tar` writes one WebDataset shard per chunk: the chunk size is the shard size.
DEFAULT_SHARD_IMAGES = 1000
MAX_IMAGES_PER_ITEM = 10_000_000
MAX_IMAGES_PER_JOB = 10_000_000
MAX_ITEMS_PER_JOB = 100_000
MAX_CHUNKS_PER_JOB = 200_000
MAX_WEBHOOK_URL_LENGTH = 2048
MAX_REDRAWS = 16
QUALITY_GATE_OPTION = "quality_gate"  # where a job row keeps its gate: jobs.options["quality_gate"]
# mark_enqueued takes ids in an IN (...) list; keep each statement under SQLite's variable limit.
ENQUEUE_BATCH_SIZE = 5000

QueueName = Literal["interactive", "bulk", "backfill"]
assert set(QUEUE_NAMES) == {"interactive", "bulk", "backfill"}  # one vocabulary with db.messaging


class ItemSpec(BaseModel):
    """One requested line: `count` images of `category`, optionally for one SKU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: str = Field(min_length=1, max_length=64)
    count: int = Field(ge=1, le=MAX_IMAGES_PER_ITEM)
    sku: str | None = Field(default=None, max_length=128)
    client_item_id: str | None = Field(default=None, max_length=255)

    @field_validator("sku")
    @classmethod
    def _sku_is_a_key_segment(cls, value: str | None) -> str | None:
        # The SKU becomes a folder in the object key: reject (never rewrite) anything unsafe there.
        if value is not None:
            try:
                validate_key_segment(value, "sku")
            except InvalidKeyError as exc:
                raise ValueError(str(exc)) from exc
        return value


class QualityGateSpec(BaseModel):
    """Per-image quality gate: redraw an image scored below `min_confidence`, at most `max_redraws` times."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_confidence: float = Field(
        ge=0.0, le=1.0, description="Evaluator probability of the requested category."
    )
    max_redraws: int = Field(default=3, ge=0, le=MAX_REDRAWS)


class JobSpec(BaseModel):
    """What a client asks for. `seed` is chosen and recorded when absent; `chunk_size` defaults per queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        default="fashion-cgan", min_length=1, max_length=128, description="name or name@version"
    )
    items: list[ItemSpec] = Field(min_length=1, max_length=MAX_ITEMS_PER_JOB)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    output_format: Literal["png", "webp", "tar"] = "png"
    chunk_size: int | None = Field(default=None, ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    queue: QueueName = "bulk"
    webhook_url: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL_LENGTH)
    options: dict[str, Any] = Field(default_factory=dict)
    quality_gate: QualityGateSpec | None = None

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def images_total(self) -> int:
        """Images requested over all items."""
        return sum(item.count for item in self.items)

    @property
    def effective_chunk_size(self) -> int:
        """The chunk size asked for, or the queue's default (tar: images per shard, 1,000)."""
        if self.output_format == "tar":
            return self.chunk_size or DEFAULT_SHARD_IMAGES
        return self.chunk_size or DEFAULT_CHUNK_SIZES[self.queue]


class ModelVersionLike(Protocol):
    """What planning needs from a model version row (`db.tables.ModelVersion` fits)."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def categories(self) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class PlannedJob:
    """The result of planning: the job id, its chunk ids (in index order) and the queue they go to."""

    job_id: str
    chunk_ids: tuple[int, ...]
    queue: str
    seed: int
    images_total: int
    published: bool = False
    existing: bool = False
    skipped_existing: int = 0  # items skipped: their images were delivered by an earlier job (db.incremental)


def _field_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "spec"


def parse_job_spec(data: Mapping[str, Any]) -> JobSpec:
    """Validate a job spec from JSON-like data; raise `PlanningError` naming the field and the rule."""
    try:
        return JobSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = [
            f"{_field_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()
        ]
        raise PlanningError("; ".join(problems)) from exc


def split_model_ref(ref: str) -> tuple[str, int | None]:
    """Split "name" or "name@version" into (name, version or None); raise `PlanningError` when malformed."""
    name, sep, version = ref.partition("@")
    if not name or (sep and not version.isdigit()):
        raise PlanningError(f"model {ref!r}: must be 'name' or 'name@version' with an integer version")
    return name, int(version) if sep else None


def _category_indices(spec: JobSpec, model_version: ModelVersionLike) -> list[tuple[str, int]]:
    """Canonical category name and class index per item (matched case-insensitively)."""
    categories = [str(category) for category in model_version.categories]
    lookup = {category.casefold(): (category, index) for index, category in enumerate(categories)}
    resolved = []
    for position, item in enumerate(spec.items):
        found = lookup.get(item.category.casefold())
        if found is None:
            raise PlanningError(
                f"items[{position}].category: {item.category!r} is not a category of model "
                f"{model_version.name}@{model_version.version} (one of: {', '.join(categories)})"
            )
        try:
            validate_key_segment(found[0], f"items[{position}].category")
        except InvalidKeyError as exc:
            raise PlanningError(str(exc)) from exc
        resolved.append(found)
    return resolved


def _check_size(spec: JobSpec) -> int:
    total = spec.images_total
    if total > MAX_IMAGES_PER_JOB:
        raise PlanningError(f"items: {total} images in total; a job may ask for at most {MAX_IMAGES_PER_JOB}")
    chunk_size = spec.effective_chunk_size
    chunks = sum(math.ceil(item.count / chunk_size) for item in spec.items)
    if chunks > MAX_CHUNKS_PER_JOB:
        raise PlanningError(
            f"chunk_size: {chunk_size} makes {chunks} chunks; at most {MAX_CHUNKS_PER_JOB} — use a larger chunk_size"
        )
    return chunks


def request_sha256(spec: JobSpec) -> str:
    """A stable hash of the request (to detect an idempotency key reused with a different body)."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _existing_for_key(
    session: Session, tenant_id: str, idempotency_key: str, digest: str
) -> PlannedJob | None:
    job = session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key)
    ).one_or_none()
    if job is None:
        return None
    if job.request_sha256 != digest:
        raise ConflictError(f"idempotency key {idempotency_key!r} was already used for a different request")
    chunk_ids = tuple(
        session.scalars(select(Chunk.id).where(Chunk.job_id == job.id).order_by(Chunk.start_index))
    )
    return PlannedJob(job.id, chunk_ids, job.queue, job.seed, job.images_total, existing=True)


def plan_job(
    session: Session,
    spec: JobSpec,
    *,
    tenant_id: str,
    model_version: ModelVersionLike,
    job_id: str | None = None,
    idempotency_key: str | None = None,
) -> PlannedJob:
    """Insert the job, its items and its chunks in the caller's transaction (nothing is published here).

    Bulk INSERTs only: one for the job, one for the items, one for the chunks; no image rows. Raises
    `PlanningError` when a category is not one of the model version's, a SKU or category cannot be a key
    segment, or the job is too large; `ConflictError` when `idempotency_key` was used for another request.
    With the same key and the same request, returns the job planned before (`existing=True`).
    """
    digest = request_sha256(spec)
    if idempotency_key is not None:
        previous = _existing_for_key(session, tenant_id, idempotency_key, digest)
        if previous is not None:
            return previous
    categories = _category_indices(spec, model_version)
    _check_size(spec)
    job_id = job_id or uuid.uuid4().hex
    seed = spec.seed if spec.seed is not None else secrets.randbits(63)
    chunk_size = spec.effective_chunk_size
    now = utcnow()
    skipped = _delivered_positions(session, spec, categories, tenant_id, model_version.id)
    generated = [item for position, item in enumerate(spec.items) if position not in skipped]
    images_total = sum(item.count for item in generated)
    chunks_total = sum(math.ceil(item.count / chunk_size) for item in generated)
    session.execute(
        insert(Job).values(
            id=job_id,
            tenant_id=tenant_id,
            model_version_id=model_version.id,
            status=JobStatus.QUEUED,
            seed=seed,
            output_format=spec.output_format,
            chunk_size=chunk_size,
            queue=spec.queue,
            options=job_options(spec),
            images_total=images_total,
            chunks_total=chunks_total,
            webhook_url=spec.webhook_url,
            idempotency_key=idempotency_key,
            request_sha256=digest,
            created_at=now,
        )
    )
    item_rows: list[dict[str, Any]] = []
    first_index = 0
    for position, (item, (category, class_index)) in enumerate(zip(spec.items, categories, strict=True)):
        item_rows.append(
            {
                "job_id": job_id,
                "position": position,
                "category": category,
                "class_index": class_index,
                "sku": item.sku,
                "client_item_id": item.client_item_id,
                "count": item.count,
                "first_index": first_index,
                "skipped_existing": position in skipped,
            }
        )
        if position not in skipped:  # a skipped item owns no indices: the job's images stay 0..total-1
            first_index += item.count
    session.execute(insert(JobItem), item_rows)
    positions = session.execute(select(JobItem.position, JobItem.id).where(JobItem.job_id == job_id))
    item_ids: dict[int, int] = {position: item_id for position, item_id in positions}
    chunk_rows = []
    for row in item_rows:
        if row["skipped_existing"]:
            continue
        start, stop = row["first_index"], row["first_index"] + row["count"]
        item_id = item_ids[row["position"]]
        for chunk_start in range(start, stop, chunk_size):
            chunk_rows.append(
                {
                    "job_id": job_id,
                    "item_id": item_id,
                    "start_index": chunk_start,
                    "stop_index": min(chunk_start + chunk_size, stop),
                    "status": ChunkStatus.PENDING,
                    "attempt": 0,
                }
            )
    if chunk_rows:
        session.execute(insert(Chunk), chunk_rows)
    chunk_ids = tuple(
        session.scalars(select(Chunk.id).where(Chunk.job_id == job_id).order_by(Chunk.start_index))
    )
    return PlannedJob(job_id, chunk_ids, spec.queue, seed, images_total, skipped_existing=len(skipped))


def _delivered_positions(
    session: Session,
    spec: JobSpec,
    categories: Sequence[tuple[str, int]],
    tenant_id: str,
    model_version_id: int,
) -> set[int]:
    """Positions of items whose images an earlier job already delivered with the same settings."""
    if spec.seed is None:
        return set()
    keys: dict[int, ItemKey] = {
        position: (str(item.client_item_id), category, item.sku, item.count)
        for position, (item, (category, _)) in enumerate(zip(spec.items, categories, strict=True))
        if item.client_item_id is not None
    }
    if not keys:
        return set()
    settings = JobSettings(tenant_id, model_version_id, spec.seed, spec.output_format, job_options(spec))
    delivered = find_delivered_items(session, settings, keys.values())
    return {position for position, key in keys.items() if key in delivered}


def job_options(spec: JobSpec) -> dict[str, Any]:
    """The options stored on the job row: the client's, plus the quality gate under `quality_gate`."""
    options = dict(spec.options)
    if spec.quality_gate is not None:
        options[QUALITY_GATE_OPTION] = spec.quality_gate.model_dump()
    return options


def mark_job_enqueued(session: Session, job_id: str) -> None:
    """Record that every pending chunk of a job was published just now (one UPDATE, any job size)."""
    session.execute(
        update(Chunk)
        .where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.PENDING)
        .values(enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def publish_planned(
    session_factory: sessionmaker[Session], planned: PlannedJob, publisher: Publisher
) -> bool:
    """Publish a committed job's chunks, then record `enqueued_at`. Returns False when the broker failed.

    A failure is logged, not raised: the job is committed, and the reaper publishes chunks that were never
    enqueued, so the client must not retry (and so create a second job).
    """
    try:
        if planned.chunk_ids:
            publisher(planned.queue, planned.chunk_ids)
        else:  # every item was skipped as already delivered: nothing to generate, only the manifest to write
            publish_finalize = getattr(publisher, "publish_finalize", None)
            if publish_finalize is not None:
                publish_finalize(planned.queue, planned.job_id)
    except Exception:
        logger.exception(
            "job %s: publishing %d chunks failed; the reaper will publish them",
            planned.job_id,
            len(planned.chunk_ids),
        )
        return False
    with transaction(session_factory) as session:
        mark_job_enqueued(session, planned.job_id)
    return True


def submit_job(
    session_factory: sessionmaker[Session],
    spec: JobSpec,
    *,
    tenant_id: str,
    model_version: ModelVersionLike,
    publisher: Publisher,
    job_id: str | None = None,
    idempotency_key: str | None = None,
) -> PlannedJob:
    """Plan a job in its own transaction, commit, then publish its chunk ids (the API's and CLI's entry)."""
    with transaction(session_factory) as session:
        planned = plan_job(
            session,
            spec,
            tenant_id=tenant_id,
            model_version=model_version,
            job_id=job_id,
            idempotency_key=idempotency_key,
        )
    if planned.existing:
        return planned
    published = publish_planned(session_factory, planned, publisher)
    return PlannedJob(
        planned.job_id,
        planned.chunk_ids,
        planned.queue,
        planned.seed,
        planned.images_total,
        published,
        skipped_existing=planned.skipped_existing,
    )
