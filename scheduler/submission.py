"""Submitting a job through the API: bounds, webhook target, idempotency, quotas, planning, publishing.

    result = submit_job_request(factory, publisher, tenant, request, idempotency_key="k1", ...)

One transaction per submit: lock the tenant row (so quotas and idempotency see other submits of the same
tenant), return the job an `Idempotency-Key` already created (same body) or refuse it (different body),
check quotas, plan. Chunks are published after the commit. Two submits racing with one key past the lock
(SQLite, or a crashed lock holder) still make one job: the unique constraint (tenant_id, idempotency_key)
fails the second INSERT, and the existing job is returned instead.

Within one API process, one tenant's submits also queue on a `TenantSubmitLocks` lock *before* they take a
thread or a pooled connection, so a burst from one tenant waits on the event loop: without it, every waiter
would hold a connection while it waited for the row lock, and the pool would run dry for everyone. The row
lock stays: it orders submits across API processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pydantic
from anyio.lowlevel import RunVar
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import ConflictError, PlanningError
from db.messaging import Publisher
from db.planning import JobSpec, PlannedJob, plan_job, publish_planned, request_sha256
from db.tables import Job, Tenant
from scheduler.api.limits import check_job_quotas
from scheduler.api.schemas import ItemCreate, JobCreate
from scheduler.errors import IdempotencyMismatchError, RequestValidationError
from scheduler.model_refs import resolve_model_version
from scheduler.settings import ApiSettings, WebhookSettings
from scheduler.webhooks import check_target

MAX_IDEMPOTENCY_KEY_CHARS = 255


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The job a submit created or replayed."""

    job: Job
    replayed: bool


# Threads for the submits' transactions, apart from the shared pool of sync routes: a submit holding its
# tenant's turn must not queue for a thread behind status reads. Submits of different tenants run in parallel.
SUBMIT_THREADS = 8


@dataclass(slots=True)
class _TenantQueue:
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    users: int = 0


@dataclass(slots=True)
class _LoopState:
    queues: dict[str, _TenantQueue] = field(default_factory=dict)
    threads: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(SUBMIT_THREADS))


class TenantSubmitLocks:
    """One FIFO lock per tenant for this process's submits, kept only while someone holds or waits for it,
    and the threads that run the submits' transactions.

    State lives per event loop (an anyio `RunVar`), so an app served by several test clients' loops in turn
    never shares a lock between loops.
    """

    def __init__(self) -> None:
        self._state: RunVar[_LoopState] = RunVar(f"catalogan_tenant_submit_locks_{id(self)}")

    def _loop_state(self) -> _LoopState:
        state = self._state.get(None)
        if state is None:
            state = _LoopState()
            self._state.set(state)
        return state

    @asynccontextmanager
    async def hold(self, tenant_id: str) -> AsyncIterator[None]:
        """Wait (on the event loop, holding nothing else) until this is the tenant's only submit in flight."""
        queues = self._loop_state().queues
        queue = queues.get(tenant_id)
        if queue is None:
            queue = queues[tenant_id] = _TenantQueue()
        queue.users += 1
        try:
            async with queue.lock:
                yield
        finally:
            queue.users -= 1
            if queue.users == 0:
                del queues[tenant_id]

    def waiting(self, tenant_id: str) -> int:
        """Submits of `tenant_id` holding or waiting for its lock in this loop (0 when none)."""
        queue = self._loop_state().queues.get(tenant_id)
        return queue.users if queue else 0

    def threads(self) -> anyio.CapacityLimiter:
        """The limiter to run a submit's transaction under (`anyio.to_thread.run_sync(..., limiter=)`)."""
        return self._loop_state().threads


def check_bounds(items: Sequence[ItemCreate], settings: ApiSettings) -> None:
    """Raise `RequestValidationError` naming the field when the items break the operator's bounds."""
    if len(items) > settings.max_items_per_job:
        raise RequestValidationError(
            "items", "max_items", f"items: at most {settings.max_items_per_job} items per job"
        )
    for position, item in enumerate(items):
        if item.count > settings.max_images_per_item:
            raise RequestValidationError(
                f"items[{position}].count",
                "max_images_per_item",
                f"items[{position}].count: at most {settings.max_images_per_item} images per item",
            )
    total = sum(item.count for item in items)
    if total > settings.max_images_per_job:
        raise RequestValidationError(
            "items",
            "max_images_per_job",
            f"items: {total} images; at most {settings.max_images_per_job} per job",
        )


def build_spec(request: JobCreate, items: Sequence[ItemCreate]) -> JobSpec:
    """The planning spec of an API request (items inline or read from a manifest)."""
    values: dict[str, object] = {
        "items": [item.model_dump(exclude_none=True) for item in items],
        "seed": request.seed,
        "output_format": request.output_format,
        "quality_gate": request.quality_gate.model_dump() if request.quality_gate else None,
        "chunk_size": request.chunk_size,
        "webhook_url": request.webhook_url,
    }
    if request.model:
        values["model"] = request.model
    try:
        return JobSpec.model_validate({k: v for k, v in values.items() if v is not None})
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "spec"
        raise RequestValidationError(field, str(error["type"]), f"{field}: {error['msg']}") from exc


def check_idempotency_key(key: str | None) -> str | None:
    """The key, or a 422 when it is empty or too long."""
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise RequestValidationError(
            "Idempotency-Key",
            "length",
            f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
        )
    return key


def _existing(session: Session, tenant_id: str, key: str, digest: str) -> Job | None:
    job = session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    ).one_or_none()
    if job is not None and job.request_sha256 != digest:
        raise IdempotencyMismatchError(key)
    return job


def _plan(
    session: Session,
    spec: JobSpec,
    tenant: Tenant,
    request: JobCreate,
    idempotency_key: str | None,
    digest: str,
) -> tuple[Job, PlannedJob | None]:
    # Serialize this tenant's submits: quotas and idempotency then see every committed job.
    session.scalars(select(Tenant).where(Tenant.id == tenant.id).with_for_update()).one()
    if idempotency_key is not None:
        existing = _existing(session, tenant.id, idempotency_key, digest)
        if existing is not None:
            return existing, None
    model_version = resolve_model_version(session, request.model)
    check_job_quotas(session, tenant, images=spec.images_total)
    try:
        planned = plan_job(
            session, spec, tenant_id=tenant.id, model_version=model_version, idempotency_key=idempotency_key
        )
    except ConflictError as exc:
        raise IdempotencyMismatchError(idempotency_key or "") from exc
    except PlanningError as exc:
        field, _, _rule = str(exc).partition(": ")
        raise RequestValidationError(field or "spec", "job_spec", str(exc)) from exc
    job = session.get(Job, planned.job_id)
    assert job is not None  # just inserted
    return job, planned


def plan_job_request(
    factory: sessionmaker[Session],
    tenant: Tenant,
    request: JobCreate,
    items: Sequence[ItemCreate],
    *,
    idempotency_key: str | None,
    settings: ApiSettings,
    webhook_settings: WebhookSettings,
) -> tuple[SubmitResult, PlannedJob | None]:
    """Check and commit (or replay) a job for `tenant`; the chunks to publish, or None for a replay.

    This is the part that takes the tenant's row lock; `publish_planned` comes after, outside any lock.
    """
    idempotency_key = check_idempotency_key(idempotency_key)
    check_bounds(items, settings)
    spec = build_spec(request, items)
    digest = request_sha256(spec)
    if request.webhook_url:
        check_target(request.webhook_url, allow_private=webhook_settings.webhook_allow_private_targets)
    try:
        with factory() as session, session.begin():
            job, planned = _plan(session, spec, tenant, request, idempotency_key, digest)
    except IntegrityError:
        if idempotency_key is None:
            raise
        # Lost a race on (tenant_id, idempotency_key): the winner's job is the answer.
        with factory() as session:
            existing = _existing(session, tenant.id, idempotency_key, digest)
        if existing is None:
            raise
        return SubmitResult(existing, replayed=True), None
    return SubmitResult(job, replayed=planned is None), planned


def submit_job_request(
    factory: sessionmaker[Session],
    publisher: Publisher,
    tenant: Tenant,
    request: JobCreate,
    items: Sequence[ItemCreate],
    *,
    idempotency_key: str | None,
    settings: ApiSettings,
    webhook_settings: WebhookSettings,
) -> SubmitResult:
    """Create (or replay) a job for `tenant` and publish its chunks: `plan_job_request`, then `publish_planned`."""
    result, planned = plan_job_request(
        factory,
        tenant,
        request,
        items,
        idempotency_key=idempotency_key,
        settings=settings,
        webhook_settings=webhook_settings,
    )
    if planned is not None:
        publish_planned(factory, planned, publisher)
    return result
