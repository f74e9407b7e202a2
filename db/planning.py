"""The one submit path: bounds, idempotency, model, quotas, planning in one transaction, publish after commit.

`submit_job` is what every door calls: `POST /v1/jobs` (scheduler/api/routes/jobs.py), `catalogan generate`
(workers/generate_command.py), scripts and the benchmarks. Planning is O(chunks), never O(images): a
1,000,000-image job is one job row, one row per item and ~4,000 chunk rows written with bulk INSERTs; image
rows appear only as workers finish images.

    spec = parse_job_spec({"model": "fashion-cgan", "items": [{"category": "sneaker", "count": 100}]})
    planned = submit_job(session_factory, spec, tenant_id=t, publisher=CeleryPublisher(app))

One transaction per submit: lock the tenant row (so quotas and idempotency see other submits of the same
tenant), return the job an idempotency key already created (same request) or refuse it (different request),
resolve the model, check quotas, plan. Chunks are published after the commit. Two submits racing with one key
past the lock (SQLite, or a crashed lock holder) still make one job: the unique constraint (tenant_id,
idempotency_key) fails the second INSERT, and the existing job is returned instead.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_layout import chunk_ranges
from db.chunks import lease_clock
from db.engine import transaction
from db.errors import IdempotencyMismatchError, InvalidKeyError, NotFoundError, PlanningError
from db.incremental import ItemKey, JobSettings, find_delivered_items
from db.job_specs import (
    LATENT_CONTROL_OPTION,
    MAX_CHUNKS_PER_JOB,
    MAX_IMAGES_PER_JOB,
    ItemSpec,
    JobSpec,
    QualityGateSpec,
    SubmitLimits,
    check_chunks,
    parse_job_spec,
    request_sha256,
)
from db.latent_control import ResolvedControl, resolve_latent_control, truncation_recipe
from db.model_versions import resolve_model_version
from db.publish_window import publish_window_chunks, take_publish_slots
from db.quotas import check_job_quotas, check_queue_allowance
from db.status import ChunkStatus, JobStatus, ModelVersionStatus
from db.storage.keys import validate_key_segment
from db.tables import Chunk, Job, JobItem, ModelVersion, Tenant, utcnow

if TYPE_CHECKING:  # Celery is needed to publish, not to plan (a benchmark plans with no broker)
    from db.messaging import Publisher

logger = logging.getLogger(__name__)

# The request types live in db.job_specs; importing them from here keeps working.
__all__ = [
    "ItemSpec",
    "JobSpec",
    "ModelVersionLike",
    "PlannedJob",
    "QualityGateSpec",
    "SubmitLimits",
    "job_options",
    "mark_job_enqueued",
    "parse_job_spec",
    "plan_job",
    "publish_planned",
    "resolve_job_model",
    "resolve_model_and_control",
    "submit_job",
]

QUALITY_GATE_OPTION = "quality_gate"  # where a job row keeps its gate: jobs.options["quality_gate"]
# Planning errors the API reports as rule `job_spec` (the field names what was wrong).
JOB_SPEC_RULE = "job_spec"


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


def category_indices(spec: JobSpec, model_version: ModelVersionLike) -> list[tuple[str, int]]:
    """Canonical category name and class index per item (matched case-insensitively)."""
    categories = [str(category) for category in model_version.categories]
    lookup = {category.casefold(): (category, index) for index, category in enumerate(categories)}
    resolved = []
    for position, item in enumerate(spec.items):
        found = lookup.get(item.category.casefold())
        field = f"items[{position}].category"
        if found is None:
            raise PlanningError(
                field,
                JOB_SPEC_RULE,
                f"{field}: {item.category!r} is not a category of model "
                f"{model_version.name}@{model_version.version} (one of: {', '.join(categories)})",
            )
        try:
            validate_key_segment(found[0], field)
        except InvalidKeyError as exc:
            raise PlanningError(field, "object_key_segment", str(exc)) from exc
        resolved.append(found)
    return resolved


def _check_size(spec: JobSpec) -> int:
    total = spec.images_total
    if total > MAX_IMAGES_PER_JOB:
        raise PlanningError(
            "items",
            JOB_SPEC_RULE,
            f"items: {total} images in total; a job may ask for at most {MAX_IMAGES_PER_JOB}",
        )
    return check_chunks(spec, MAX_CHUNKS_PER_JOB)


def find_idempotent_job(
    session: Session, tenant_id: str, idempotency_key: str, digest: str
) -> PlannedJob | None:
    """The job `idempotency_key` created for the same request (`existing=True`), or None; raises
    `IdempotencyMismatchError` when the key was used for a different request."""
    job = session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key)
    ).one_or_none()
    if job is None:
        return None
    if job.request_sha256 != digest:
        raise IdempotencyMismatchError(idempotency_key)
    chunk_ids = tuple(
        session.scalars(select(Chunk.id).where(Chunk.job_id == job.id).order_by(Chunk.start_index))
    )
    return PlannedJob(
        job_id=job.id,
        chunk_ids=chunk_ids,
        queue=job.queue,
        seed=job.seed,
        images_total=job.images_total,
        existing=True,
    )


def resolve_job_model(session: Session, ref: str | None) -> ModelVersion:
    """The model version a job (or a preview, or an estimate) runs with: `resolve_model_version`, then the
    job rules. Raises `PlanningError` on field `model`: rule `registered` when there is none, `not_retired`
    when it is retired."""
    try:
        found = resolve_model_version(session, ref)
    except NotFoundError as exc:
        raise PlanningError("model", "registered", f"model: {exc} (see GET /v1/models)") from exc
    if found.status is ModelVersionStatus.RETIRED:
        raise PlanningError("model", "not_retired", f"model: {found.name}@{found.version} is retired")
    return found


def plan_job(
    session: Session,
    spec: JobSpec,
    *,
    tenant_id: str,
    model_version: ModelVersionLike,
    job_id: str | None = None,
    idempotency_key: str | None = None,
    control: ResolvedControl | None = None,
    retention_days: int | None = None,
) -> PlannedJob:
    """Insert the job, its items and its chunks in the caller's transaction (nothing is published here).

    The planning step of `submit_job`, which checks bounds, idempotency, model and quotas first; call it
    alone only to measure or test planning. Bulk INSERTs only: one for the job, one for the items, one for
    the chunks; no image rows. Raises `PlanningError` when a category is not one of the model version's, a
    SKU or category cannot be a key segment, or the job is too large. `idempotency_key` is recorded on the
    job row (the unique constraint (tenant_id, idempotency_key) refuses a second job with it).
    A variation or interpolation job needs its `control` (`db.latent_control.resolve_latent_control`):
    its one item (the sources' category) and the recipe stored in the job's options. `retention_days`: the
    days the job is kept once finished (None: until deleted; `SubmitLimits.retention_days` resolves it).
    """
    digest = request_sha256(spec)
    if (spec.variation is not None or spec.interpolation is not None) and control is None:
        raise ValueError("a variation or interpolation job is planned with its resolved control")
    if control is not None:
        spec = spec.model_copy(update={"items": [ItemSpec(category=control.category, count=control.count)]})
    categories = category_indices(spec, model_version)
    _check_size(spec)
    job_id = job_id or uuid.uuid4().hex
    seed = spec.seed if spec.seed is not None else secrets.randbits(63)
    chunk_size = spec.effective_chunk_size
    now = utcnow()
    skipped = _delivered_positions(session, spec, categories, tenant_id, model_version.id)
    generated = [item for position, item in enumerate(spec.items) if position not in skipped]
    images_total = sum(item.count for item in generated)
    # Consecutive small items share a chunk (db.chunk_layout); a skipped item owns no indices (count 0 here).
    counts = [0 if position in skipped else item.count for position, item in enumerate(spec.items)]
    ranges = list(chunk_ranges(counts, chunk_size))
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
            options=job_options(spec, control),
            job_metadata=spec.metadata,
            retention_days=retention_days,
            webhook_events=spec.webhook_events,
            images_total=images_total,
            chunks_total=len(ranges),
            quota_cost=_quota_cost(
                spec, images_total, skipped_images=sum(spec.items[position].count for position in skipped)
            ),
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
    chunk_rows = [
        {
            "job_id": job_id,
            "item_id": item_ids[part.first_item],  # the chunk's first item; the worker reads each index's own
            "start_index": part.start,
            "stop_index": part.stop,
            "status": ChunkStatus.PENDING,
            "attempt": 0,
        }
        for part in ranges
    ]
    if chunk_rows:
        session.execute(insert(Chunk), chunk_rows)
    chunk_ids = tuple(
        session.scalars(select(Chunk.id).where(Chunk.job_id == job_id).order_by(Chunk.start_index))
    )
    return PlannedJob(
        job_id=job_id,
        chunk_ids=chunk_ids,
        queue=spec.queue,
        seed=seed,
        images_total=images_total,
        skipped_existing=len(skipped),
    )


# Images skipped as already delivered are not generated, but each is still a row of the job's manifest: they are
# charged one quota unit per this many, so that resubmitting a delivered catalogue over and over is not free.
SKIPPED_IMAGES_PER_QUOTA_UNIT = 100


def _quota_cost(spec: JobSpec, images_total: int, *, skipped_images: int = 0) -> int:
    """What the job charges to its tenant's daily quota: each generated image, with its worst-case redraws,
    and one unit per `SKIPPED_IMAGES_PER_QUOTA_UNIT` images skipped as already delivered (rounded up)."""
    return images_total * (1 + spec.redraws_per_image) + -(-skipped_images // SKIPPED_IMAGES_PER_QUOTA_UNIT)


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
    settings = JobSettings(
        tenant_id, model_version_id, spec.seed, spec.output_format, job_options(spec, None)
    )
    delivered = find_delivered_items(session, settings, keys.values())
    return {position for position, key in keys.items() if key in delivered}


def job_options(spec: JobSpec, control: ResolvedControl | None = None) -> dict[str, Any]:
    """The options stored on the job row: the client's, plus the quality gate under `quality_gate` and the
    latent recipe under `latent_control` (`db.latent_control`; absent for a plain job with ψ = 1.0)."""
    options = dict(spec.options)
    if spec.quality_gate is not None:
        options[QUALITY_GATE_OPTION] = spec.quality_gate.model_dump()
    recipe = control.recipe if control is not None else truncation_recipe(spec.truncation)
    if recipe is not None:
        options[LATENT_CONTROL_OPTION] = recipe
    return options


def mark_job_enqueued(session: Session, job_id: str) -> None:
    """Record that every pending chunk of a job was published just now (one UPDATE, any job size), on the lease
    clock (the database's on PostgreSQL) that the reaper's lost-message threshold reads.

    Only for a job published whole, outside any publish window (`publish_planned` without a tenant): it
    stamps held chunks too, which then count as in flight though never sent. Chunks published through a
    tenant's window are marked by `db.publish_window.take_publish_slots` (a retry: `refill`)."""
    session.execute(
        update(Chunk)
        .where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.PENDING)
        .values(enqueued_at=lease_clock(session))
        .execution_options(synchronize_session=False)
    )


def publish_planned(
    session_factory: sessionmaker[Session],
    planned: PlannedJob,
    publisher: Publisher,
    *,
    tenant_id: str | None = None,
) -> bool:
    """Publish a committed job's chunks and record `enqueued_at`. Returns False when the broker failed.

    With `tenant_id`, as many of the tenant's held chunks as its publish window has room for
    (`db.publish_window`: oldest first, so this job's follow the tenant's earlier ones); the rest are published
    as the tenant's chunks finish. Without it, every chunk in `planned` (a resumed embedded job).
    A failure is logged, not raised: the job is committed, and the reaper publishes chunks that were never
    enqueued, so the client must not retry (and so create a second job).
    """
    try:
        if planned.chunk_ids and tenant_id is not None:
            window = publish_window_chunks()
            with transaction(session_factory) as session:
                ids = take_publish_slots(session, tenant_id, planned.queue, window=window)
            if ids:
                publisher(planned.queue, ids)
            return True
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
    publisher: Publisher,
    limits: SubmitLimits = SubmitLimits(),
    idempotency_key: str | None = None,
    job_id: str | None = None,
    model_version: ModelVersionLike | None = None,
) -> PlannedJob:
    """Create (or replay) a job for `tenant_id` and publish its chunks: the one submit path of every door.

    In order, each check before the work it bounds: `limits` (the operator's bounds; tenant quotas when
    `limits.tenant_quotas`), then in one transaction with the tenant's row locked: the job `idempotency_key`
    created before (returned with `existing=True`, nothing published), the tenant's queue allowance (with
    `limits.tenant_quotas`), the model (`spec.model` through
    `resolve_job_model`, unless the caller passes the `model_version` it resolved that way), quotas, planning.
    After the commit the chunk ids are published (`published=False` when the broker failed: the reaper
    publishes them later, and the client must not retry).

    Raises `PlanningError` (field + rule), `IdempotencyMismatchError`, `QuotaExceededError`, and
    `NotFoundError` when the tenant does not exist.
    """
    limits.check(spec)
    digest = request_sha256(spec)
    try:
        with transaction(session_factory) as session:
            planned = _plan_submission(
                session,
                spec,
                digest,
                tenant_id=tenant_id,
                limits=limits,
                idempotency_key=idempotency_key,
                job_id=job_id,
                model_version=model_version,
            )
    except IntegrityError:
        if idempotency_key is None:
            raise
        # Lost a race on (tenant_id, idempotency_key) past the row lock: the winner's job is the answer.
        with session_factory() as session:
            existing = find_idempotent_job(session, tenant_id, idempotency_key, digest)
        if existing is None:
            raise
        return existing
    if planned.existing:
        return planned
    published = publish_planned(session_factory, planned, publisher, tenant_id=tenant_id)
    return dataclasses.replace(planned, published=published)


def _plan_submission(
    session: Session,
    spec: JobSpec,
    digest: str,
    *,
    tenant_id: str,
    limits: SubmitLimits,
    idempotency_key: str | None,
    job_id: str | None,
    model_version: ModelVersionLike | None,
) -> PlannedJob:
    # Serialize this tenant's submits: quotas and idempotency then see every committed job.
    tenant = session.scalars(select(Tenant).where(Tenant.id == tenant_id).with_for_update()).one_or_none()
    if tenant is None:
        raise NotFoundError(f"tenant {tenant_id} not found")
    if idempotency_key is not None:
        existing = find_idempotent_job(session, tenant_id, idempotency_key, digest)
        if existing is not None:
            return existing
    if limits.tenant_quotas:
        check_queue_allowance(tenant, spec.queue)
    control, model_version = resolve_model_and_control(session, spec, tenant_id, model_version)
    if limits.tenant_quotas:
        check_job_quotas(session, tenant, images=spec.images_total, cost=spec.quota_cost)
    return plan_job(
        session,
        spec,
        tenant_id=tenant_id,
        model_version=model_version,
        job_id=job_id,
        idempotency_key=idempotency_key,
        control=control,
        retention_days=limits.retention_days(spec),
    )


def resolve_model_and_control(
    session: Session, spec: JobSpec, tenant_id: str, model_version: ModelVersionLike | None = None
) -> tuple[ResolvedControl | None, ModelVersionLike]:
    """The checked sources (None: a job of items) and the model version a job runs with: what a submit checks
    and `POST /v1/jobs:estimate` checks the same way, so an estimate is refused exactly where a submit is.

    A variation or interpolation: `resolve_latent_control` (its sources), then its sources' model version,
    which `spec.model` (or the `model_version` a caller resolved from it) must name when given, and which must
    not be retired. Any other job: `model_version` when given, else `resolve_job_model(spec.model)`. Raises
    `PlanningError` naming the field and the rule."""
    control = resolve_latent_control(session, spec, tenant_id)
    if control is not None:
        return control, _source_model(session, spec, control, model_version)
    if model_version is None:
        model_version = resolve_job_model(session, spec.model)
    return None, model_version


def _source_model(
    session: Session, spec: JobSpec, control: ResolvedControl, given: ModelVersionLike | None
) -> ModelVersion:
    """A variation or interpolation runs with its sources' model version; `model`, when named, must be it."""
    found = session.get(ModelVersion, control.model_version_id)
    assert found is not None  # the source's job row references it
    named = given.id if given is not None else None
    if named is None and spec.model is not None:
        named = resolve_job_model(session, spec.model).id
    if named is not None and named != found.id:
        raise PlanningError(
            "model",
            "source_model_version",
            f"model: the source image was made by {found.name}@{found.version}; omit model or name that version",
        )
    if found.status is ModelVersionStatus.RETIRED:
        raise PlanningError("model", "not_retired", f"model: {found.name}@{found.version} is retired")
    return found
