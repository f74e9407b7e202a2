"""`/v1/jobs`: submit (inline items, uploaded manifest or `s3://` manifest), list, show, cancel, retry, estimate."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import pydantic
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError as FastApiValidationError
from sqlalchemy import and_, or_, select
from starlette.datastructures import UploadFile

from db.engine import transaction
from db.jobs import get_job, request_cancel
from db.planning import mark_job_enqueued
from db.status import JobStatus
from db.tables import Job, ModelVersion
from scheduler.api.cursors import decode_cursor, encode_cursor
from scheduler.api.deps import Services, ServicesDep, SessionDep, SettingsDep, TenantDep
from scheduler.api.problems import COMMON_ERRORS, problem_doc
from scheduler.api.schemas import EstimatePublic, ItemCreate, JobCreate, JobPage, JobPublic, ModelVersionRef
from scheduler.api.views import job_public
from scheduler.errors import RequestValidationError, UnsupportedMediaTypeError
from scheduler.estimates import count_chunks, measured_throughput
from scheduler.item_manifests import manifest_format, parse_item_manifest, read_manifest_uri
from scheduler.job_retries import retry_failed_images
from scheduler.model_refs import resolve_model_version
from scheduler.submission import submit_job_request

router = APIRouter(prefix="/v1", tags=["jobs"])


SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/JobCreate"},
                "examples": {
                    "inline": {
                        "summary": "Inline items",
                        "value": {
                            "model": "fashion-cgan",
                            "items": [
                                {"category": "sneaker", "count": 4, "sku": "SKU-10042"},
                                {"category": "dress", "count": 2},
                            ],
                            "seed": 7,
                        },
                    },
                    "s3": {
                        "summary": "Manifest in S3",
                        "value": {"manifest_uri": "s3://catalog/exports/missing-images.csv", "seed": 7},
                    },
                },
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV, JSONL or Parquet with columns sku, category, count.",
                        },
                        "spec": {
                            "type": "string",
                            "description": "JSON object with the other JobCreate fields (model, seed, webhook_url).",
                        },
                    },
                }
            },
        },
    }
}


def _validation_error(exc: pydantic.ValidationError) -> FastApiValidationError:
    return FastApiValidationError(exc.errors(include_url=False, include_context=False))


async def _read_request(
    request: Request, services: Services, tenant_id: str
) -> tuple[JobCreate, list[ItemCreate]]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=2)
        upload = form.get("file")
        spec_text = form.get("spec")
        if not isinstance(upload, UploadFile):
            raise RequestValidationError(
                "file", "required", "file: upload the manifest as the multipart part 'file'"
            )
        try:
            job_request = JobCreate.model_validate_json(
                spec_text if isinstance(spec_text, str) and spec_text else "{}"
            )
        except pydantic.ValidationError as exc:
            raise _validation_error(exc) from exc
        if job_request.items is not None or job_request.manifest_uri is not None:
            raise RequestValidationError(
                "spec", "one_source", "spec: with an uploaded file, omit items and manifest_uri"
            )
        fmt = manifest_format(upload.filename or "", upload.content_type)
        data = await upload.read()
        items = await run_in_threadpool(
            parse_item_manifest, data, fmt, max_items=services.settings.max_items_per_job
        )
        return job_request, items
    if content_type and not content_type.startswith("application/json"):
        raise UnsupportedMediaTypeError(
            f"content type {content_type!r}: send application/json or multipart/form-data"
        )
    body = await request.body()
    try:
        job_request = JobCreate.model_validate_json(body or b"null")
    except pydantic.ValidationError as exc:
        raise _validation_error(exc) from exc
    if job_request.manifest_uri is not None:
        data, fmt = await run_in_threadpool(
            read_manifest_uri, job_request.manifest_uri, tenant_id=tenant_id, store=services.store
        )
        items = await run_in_threadpool(
            parse_item_manifest, data, fmt, max_items=services.settings.max_items_per_job
        )
        return job_request, items
    if not job_request.items:
        raise RequestValidationError("items", "required", "items: give items, manifest_uri, or upload a file")
    return job_request, job_request.items


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobPublic,
    summary="Submit a job",
    openapi_extra=SUBMIT_BODY,
    responses={
        **COMMON_ERRORS,
        200: {
            "description": "Replayed: the job this Idempotency-Key created before (`Idempotent-Replayed: true`)."
        },
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
        Header(alias="Idempotency-Key", max_length=255, description="Same key + same body → the same job."),
    ] = None,
) -> JobPublic:
    """Create a job from inline `items`, an uploaded manifest (multipart `file`) or an `s3://` manifest.

    Its chunks are queued after the commit. With an `Idempotency-Key`, repeating the request returns the
    same job with `Idempotent-Replayed: true`; the same key with a different body is a 422.
    """
    job_request, items = await _read_request(request, services, tenant.id)
    result = await run_in_threadpool(
        submit_job_request,
        services.session_factory,
        services.publisher,
        tenant,
        job_request,
        items,
        idempotency_key=idempotency_key,
        settings=services.settings,
        webhook_settings=services.webhooks,
    )
    with services.session_factory() as session:
        model = session.get(ModelVersion, result.job.model_version_id)
    response.headers["Location"] = f"/v1/jobs/{result.job.id}"
    if result.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return job_public(result.job, model)


@router.get("/jobs", response_model=JobPage, summary="List jobs", responses=COMMON_ERRORS)
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
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
    return JobPage(data=[job_public(job, model) for job, model in page], next_cursor=next_cursor)


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
    return job_public(job, session.get(ModelVersion, job.model_version_id))


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
    services.publisher(plan.queue, plan.chunk_ids)
    with transaction(services.session_factory) as session:
        mark_job_enqueued(session, job_id)
        job = get_job(session, job_id, tenant_id=tenant.id)
        model = session.get(ModelVersion, job.model_version_id)
    return job_public(job, model)


@router.post(
    "/jobs:estimate",
    response_model=EstimatePublic,
    summary="Estimate a job (dry run)",
    responses=COMMON_ERRORS,
)
def estimate_job(
    request: JobCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> EstimatePublic:
    """Images, chunks and seconds a job would take at the fleet's measured throughput; nothing is created."""
    if not request.items:
        raise RequestValidationError("items", "required", "items: an estimate needs inline items")
    model = resolve_model_version(session, request.model)
    images = sum(item.count for item in request.items)
    throughput = measured_throughput(session, default=settings.default_images_per_second)
    return EstimatePublic(
        images=images,
        chunks=count_chunks(request.items, request.chunk_size),
        seconds=round(images / throughput.images_per_second, 1),
        images_per_second=throughput.images_per_second,
        throughput_basis="measured" if throughput.basis == "measured" else "default",
        model=ModelVersionRef(name=model.name, version=model.version),
    )
