"""`/v1/jobs`: submit (inline items, uploaded manifest or `s3://` manifest), list, show, cancel, retry, estimate."""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import StringConstraints
from sqlalchemy import and_, or_, select

from db import job_deletion
from db.chunk_outcomes import retry_failed_images
from db.engine import transaction
from db.incremental import count_skipped_items, count_skipped_items_of_jobs
from db.job_specs import MAX_METADATA_KEYS, METADATA_FILTER_PATTERN, JobSpec, parse_metadata_pairs
from db.jobs import get_job, request_cancel
from db.planning import PlannedJob, resolve_model_and_control, submit_job
from db.publish_window import publish_window_chunks, refill
from db.status import JobStatus
from db.tables import Job, ModelVersion, utcnow
from scheduler.api.cursors import decode_cursor, encode_cursor
from scheduler.api.deps import Services, ServicesDep, SessionDep, SettingsDep, TenantDep
from scheduler.api.item_manifests import parse_item_manifest, read_manifest_uri
from scheduler.api.job_requests import (
    SUBMIT_BODY_OPENAPI,
    check_idempotency_key,
    job_spec,
    json_body_openapi,
    read_job_request,
    read_json_body,
    submit_limits,
)
from scheduler.api.problems import COMMON_ERRORS, problem_doc
from scheduler.api.schemas import EstimatePublic, JobCreate, JobPage, JobPublic, ModelVersionRef
from scheduler.api.views import job_public
from scheduler.errors import RateLimitedError, RequestValidationError
from scheduler.estimates import count_chunks, measured_throughput
from scheduler.settings import ApiSettings
from scheduler.submission import SubmitAbandonedError

# Answered (to no one) for a submit dropped because its client went away (nginx's code for it).
CLIENT_CLOSED_REQUEST = 499
# Deletions of one tenant running at once in this API process (one more: 429), on DELETION_THREADS threads of
# their own: a deletion waits on the store (a listing and a DeleteObjects of up to 1,000 keys), and 40 of
# them on the shared pool of sync routes starved every other tenant's requests.
DELETIONS_PER_TENANT = 2
DELETION_THREADS = 4
# What a tenant over its deletions is told to wait: about one deletion of 1,000 objects.
DELETION_RETRY_AFTER_SECONDS = 2

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobPublic,
    summary="Submit a job",
    openapi_extra=SUBMIT_BODY_OPENAPI,
    responses={
        **COMMON_ERRORS,
        200: {
            "description": "Replayed: the job this Idempotency-Key created before (`Idempotent-Replayed: true`)."
        },
        400: problem_doc(
            "A multipart body that cannot be parsed, or with parts other than `file` and `spec`."
        ),
        413: problem_doc("Request body too large."),
        415: problem_doc("Neither JSON nor multipart."),
    },
)
async def create_job(
    request: Request,
    response: Response,
    services: ServicesDep,
    tenant: TenantDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            # Printable ASCII without leading or trailing space (HTTP strips those), as check_idempotency_key.
            pattern=r"^[!-~]([ -~]{0,253}[!-~])?$",
            description="Same key + same body → the same job. 1 to 255 printable ASCII characters.",
        ),
    ] = None,
) -> JobPublic:
    """Create a job from inline `items`, an uploaded manifest (multipart `file`) or an `s3://` manifest.

    Its chunks are queued after the commit. With an `Idempotency-Key`, repeating the request returns the
    same job with `Idempotent-Replayed: true`; the same key with a different body is a 422.
    """
    idempotency_key = check_idempotency_key(idempotency_key)
    locks, settings = services.submit_locks, services.settings
    # Counted as queued before the body is read: a tenant over its queue gets a 429 and costs nothing more.
    async with locks.queued(tenant.id, max_waiting=settings.submit_queue_max_per_tenant):
        # One submit per tenant at a time in this process, queued here on the event loop: a queued submit holds
        # neither a thread nor a pooled connection (the tenant's row lock still orders API processes), nor its
        # body: the body is read and parsed (an s3:// manifest fetched) only in its turn, so one tenant's
        # queued submits cost a socket each, not a parsed 10 MiB request each. It waits at most
        # submit_wait_seconds. A client that went away is found once its body is read: polling for a
        # disconnect before that would consume the body.
        try:
            async with locks.turn(tenant.id, wait_seconds=settings.submit_wait_seconds):
                job_request, items = await read_job_request(request, services, tenant.id)
                if await request.is_disconnected():
                    raise SubmitAbandonedError("the client went away while its submit was queued")
                spec = await run_in_threadpool(job_spec, job_request, items)
                del job_request, items
                if spec.webhook_url:  # off the event loop, bounded in time and per tenant (SubmitResolver)
                    assert services.webhook_resolver is not None
                    await services.webhook_resolver.check(
                        spec.webhook_url,
                        allow_private=services.webhooks.webhook_allow_private_targets,
                        tenant_id=tenant.id,
                    )
                submit = functools.partial(
                    submit_job,
                    services.session_factory,
                    spec,
                    tenant_id=tenant.id,
                    publisher=services.publisher,
                    limits=submit_limits(settings),
                    idempotency_key=idempotency_key,
                )
                planned = await anyio.to_thread.run_sync(submit, limiter=locks.threads())
        except SubmitAbandonedError:
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # type: ignore[return-value]
    # In the thread pool too: waiting for a pooled connection on the event loop would stall every request.
    job, model, skipped = await run_in_threadpool(_job_model_and_skipped, services, planned)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if planned.existing:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return job_public(job, model, skipped_existing=skipped)


def _job_model_and_skipped(
    services: Services, planned: PlannedJob
) -> tuple[Job, ModelVersion | None, tuple[int, int]]:
    """The submitted job's row, its model version and `count_skipped_items` (items, images skipped)."""
    with services.read_sessions() as session:
        job = get_job(session, planned.job_id)
        return job, session.get(ModelVersion, job.model_version_id), count_skipped_items(session, job.id)


@router.get("/jobs", response_model=JobPage, summary="List jobs", responses=COMMON_ERRORS)
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    metadata: Annotated[
        list[Annotated[str, StringConstraints(pattern=METADATA_FILTER_PATTERN)]] | None,
        Query(
            max_length=MAX_METADATA_KEYS,
            description="Only jobs whose metadata has key=value (repeat for several; all must match).",
            examples=["batch=spring-2027"],
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobPage:
    """The tenant's jobs, newest first, one page at a time."""
    limit = min(limit, settings.page_size_max)
    query = select(Job, ModelVersion).join(
        ModelVersion, ModelVersion.id == Job.model_version_id, isouter=True
    )
    query = query.where(Job.tenant_id == tenant.id)
    if status is not None:
        query = query.where(Job.status == status)
    for key, value in parse_metadata_pairs(metadata or []).items():
        query = query.where(Job.job_metadata[key].as_string() == value)
    if cursor:
        created_text, last_id = decode_cursor(cursor, arity=2)
        try:
            created = _parse_time(created_text)
        except ValueError as exc:
            raise RequestValidationError(
                "cursor", "opaque_cursor", "cursor: not a cursor this API issued"
            ) from exc
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < str(last_id)))
        )
    rows = session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1][0]
        next_cursor = encode_cursor(last.created_at.isoformat(), last.id)
    skipped = count_skipped_items_of_jobs(session, [job.id for job, _ in page])
    return JobPage(
        data=[job_public(job, model, skipped_existing=skipped.get(job.id, (0, 0))) for job, model in page],
        next_cursor=next_cursor,
    )


def _parse_time(value: object) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError("not a timestamp")
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("naive timestamp")
    return parsed


@router.get("/jobs/{job_id}", response_model=JobPublic, summary="Show a job", responses=COMMON_ERRORS)
def show_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """Status, counts, timestamps, model version and ETA of one job."""
    job = get_job(session, job_id, tenant_id=tenant.id)
    return job_public(
        job,
        session.get(ModelVersion, job.model_version_id),
        skipped_existing=count_skipped_items(session, job.id),
    )


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    summary="Delete a finished job",
    responses={
        **COMMON_ERRORS,
        202: {
            "description": "Deletion started: the job has more objects than one request deletes "
            f"({job_deletion.DELETE_REQUEST_MAX_OBJECTS}); it is expired now, and the reaper deletes the rest "
            "and then its rows (GET gives 404 once done; DELETE again is also fine). Also the answer to a "
            "DELETE of a job whose deletion another request of the tenant is running."
        },
        409: problem_doc("The job is not finished (queued, running or cancelling): cancel it first."),
        429: problem_doc(
            f"Rate limit or quota reached, or {DELETIONS_PER_TENANT} deletions of the tenant are already "
            "running; see `Retry-After`."
        ),
    },
)
async def delete_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    """Remove a finished job (succeeded, completed_with_failures, failed or cancelled): its images, manifests
    and shards in the store, then its rows. Another tenant's job is a 404; an unfinished one a 409 (cancel it,
    then delete it). No database connection is held while the store deletes.

    At most `DELETIONS_PER_TENANT` deletions of one tenant run at once in this process (one more: 429), on
    the deletions' own threads, never the shared pool of sync routes. A DELETE of a job whose deletion is
    running answers 202 once that one has expired the job, without deleting anything itself."""
    deletions = _loop_deletions()
    key = (tenant.id, job_id)
    running = deletions.running.get(key)
    if running is not None:
        await running.expired.wait()  # on the event loop: no thread, no connection
        if running.error is not None:
            raise running.error  # the same 404, 409 or 503 as the running deletion's
        return Response(status_code=202)
    if deletions.per_tenant[tenant.id] >= DELETIONS_PER_TENANT:
        raise RateLimitedError(
            f"{DELETIONS_PER_TENANT} deletions of this tenant are already running; delete fewer jobs at once",
            retry_after_seconds=DELETION_RETRY_AFTER_SECONDS,
        )
    deletion = deletions.running[key] = _Deletion()
    deletions.per_tenant[tenant.id] += 1
    try:
        result = await _delete(services, tenant.id, job_id, deletion, deletions.threads)
    finally:
        del deletions.running[key]
        deletions.per_tenant[tenant.id] -= 1
        if deletions.per_tenant[tenant.id] == 0:
            del deletions.per_tenant[tenant.id]
    return Response(status_code=204 if result.finished else 202)


@dataclass(slots=True)
class _Deletion:
    """A deletion running in this process: `expired` is set once its first step is done, `error` when it
    failed (the job is not this tenant's, or not finished)."""

    expired: anyio.Event = field(default_factory=anyio.Event)
    error: Exception | None = None


@dataclass(slots=True)
class _LoopDeletions:
    running: dict[tuple[str, str], _Deletion] = field(default_factory=dict)  # (tenant id, job id) → deletion
    per_tenant: Counter[str] = field(default_factory=Counter)
    threads: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(DELETION_THREADS))


# Per event loop, as the submit locks (scheduler.submission): an app served by several loops in turn (tests)
# never shares a deletion between them.
_deletions: RunVar[_LoopDeletions] = RunVar("catalogan_job_deletions")


def _loop_deletions() -> _LoopDeletions:
    state = _deletions.get(None)
    if state is None:
        state = _LoopDeletions()
        _deletions.set(state)
    return state


async def _delete(
    services: Services, tenant_id: str, job_id: str, deletion: _Deletion, threads: anyio.CapacityLimiter
) -> job_deletion.DeletedJob:
    """`job_deletion.delete_job` in its steps on `threads`, telling `deletion` when the job is expired."""
    now = utcnow()
    expire = functools.partial(
        job_deletion.expire_job, services.session_factory, job_id, tenant_id=tenant_id, now=now
    )
    try:
        owner = await anyio.to_thread.run_sync(expire, limiter=threads)
    except Exception as exc:
        deletion.error = exc
        raise
    finally:
        deletion.expired.set()
    purge = functools.partial(
        job_deletion.purge_job,
        services.session_factory,
        services.store,
        job_id,
        tenant_id=owner,
        max_objects=job_deletion.DELETE_REQUEST_MAX_OBJECTS,
        now=now,
    )
    return await anyio.to_thread.run_sync(purge, limiter=threads)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobPublic,
    status_code=202,
    summary="Cancel a job",
    responses=COMMON_ERRORS,
)
def cancel_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> JobPublic:
    """Ask the job to stop. Workers stop between batches; finished images stay. Cancelling twice is harmless."""
    with transaction(services.session_factory) as session:
        job = request_cancel(session, job_id, tenant_id=tenant.id)
        model = session.get(ModelVersion, job.model_version_id)
    return job_public(job, model)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobPublic,
    status_code=202,
    summary="Retry failed images",
    responses={
        **COMMON_ERRORS,
        409: problem_doc("The job has no failed images, or is cancelled or succeeded."),
    },
)
def retry_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> JobPublic:
    """Run the job's failed images again: its quarantined chunks go back to the queue."""
    with transaction(services.session_factory) as session:
        plan = retry_failed_images(session, job_id, tenant_id=tenant.id)
        # The job as the retry left it: once published, a worker may already be running it.
        job = get_job(session, job_id, tenant_id=tenant.id)
        session.refresh(job)
        retried = job_public(job, session.get(ModelVersion, job.model_version_id))
    # The retried chunks are held again (pending, never published): they go out through the tenant's publish
    # window as a submit's do, as much as it has room for now and the rest as the tenant's chunks finish. A
    # failed send is logged; the chunks it marked published are the reaper's to publish again.
    refill(
        services.session_factory, services.publisher, tenant.id, plan.queue, window=publish_window_chunks()
    )
    return retried


@router.post(
    "/jobs:estimate",
    response_model=EstimatePublic,
    summary="Estimate a job (dry run)",
    responses={
        **COMMON_ERRORS,
        413: problem_doc("Request body too large."),
        415: problem_doc("Not JSON."),
        429: problem_doc(
            "Rate limit reached, or the tenant's submit queue is full or its turn did not come in time "
            "(estimates queue with submits); see `Retry-After`."
        ),
    },
    openapi_extra=json_body_openapi(JobCreate),
)
async def estimate_job(
    request: Request, services: ServicesDep, tenant: TenantDep, settings: SettingsDep
) -> EstimatePublic:
    """Images, chunks and seconds a job would take at the fleet's measured throughput; nothing is created.

    The body is the one `POST /v1/jobs` takes as JSON: inline `items`, or an `s3://` manifest that is read
    (and checked) as a submit would read it, or a variation / interpolation (its source images checked).
    An estimate queues with the tenant's submits, as a submit does.
    """
    locks = services.submit_locks
    # An estimate costs what a submit's parse costs (a 10 MiB body, a 64 MiB manifest): it takes the tenant's
    # submit turn, counted as queued before its body is read (a 429 when the tenant's queue is full), and
    # reads and parses the body only in its turn, so one tenant's burst of estimates waits on the event loop
    # holding a socket each, and runs one at a time.
    async with (
        locks.queued(tenant.id, max_waiting=settings.submit_queue_max_per_tenant),
        locks.turn(tenant.id, wait_seconds=settings.submit_wait_seconds),
    ):
        return await _read_and_estimate(request, services, tenant.id, settings)


async def _read_and_estimate(
    request: Request, services: Services, tenant_id: str, settings: ApiSettings
) -> EstimatePublic:
    # The body is read after the key and the rate limit, and parsed off the event loop; an `s3://` manifest
    # is read and parsed before a database session is taken, so a slow read holds no pooled connection.
    job_request = await read_json_body(request, JobCreate)
    items = job_request.items
    control = job_request.variation is not None or job_request.interpolation is not None
    if job_request.manifest_uri is not None:
        data, fmt = await run_in_threadpool(
            read_manifest_uri,
            job_request.manifest_uri,
            tenant_id=tenant_id,
            store=services.store,
            settings=services.settings,
        )
        items = await run_in_threadpool(parse_item_manifest, data, fmt, settings=settings)
        del data
    if not items and not control:
        raise RequestValidationError("items", "required", "items: give items or manifest_uri")
    spec = await run_in_threadpool(job_spec, job_request, items or [])
    del job_request, items
    # The operator's bounds before any work they bound: an estimate of a job a submit would refuse is refused
    # with the submit's 422 (a job of 10^10 one-image chunks is not counted, let alone estimated).
    await run_in_threadpool(submit_limits(settings).check, spec)
    async with services.session_slot():
        return await run_in_threadpool(_estimate, services, spec, tenant_id, settings)


def _estimate(services: Services, spec: JobSpec, tenant_id: str, settings: ApiSettings) -> EstimatePublic:
    """The estimate of a checked spec: its model (or its source images' model) and the measured throughput.

    The model and the sources go through the submit's own checks (`resolve_model_and_control`): an estimate
    a submit would refuse (a source of another model version than `model`, a retired one, an expired
    source) is the submit's 422."""
    with services.read_sessions() as session:
        _, model = resolve_model_and_control(session, spec, tenant_id)
        throughput = measured_throughput(session, default=settings.default_images_per_second)
        model_ref = ModelVersionRef(name=model.name, version=model.version)
    images = spec.images_total
    return EstimatePublic(
        images=images,
        quota_cost=spec.quota_cost,
        chunks=count_chunks(spec),
        seconds=round(images / throughput.images_per_second, 1),
        images_per_second=throughput.images_per_second,
        throughput_basis="measured" if throughput.basis == "measured" else "default",
        model=model_ref,
    )
