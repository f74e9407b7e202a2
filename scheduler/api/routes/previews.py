"""`/v1/previews`: try a model on a few images before a bulk job."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request

from db.planning import resolve_job_model
from db.tables import ModelVersion
from scheduler.api.deps import ServicesDep, TenantDep
from scheduler.api.job_requests import json_body_openapi, read_json_body
from scheduler.api.problems import COMMON_ERRORS, problem_doc
from scheduler.api.schemas import ModelVersionRef, PreviewCreate, PreviewImagePublic, PreviewPublic
from scheduler.previews import run_preview

router = APIRouter(prefix="/v1", tags=["previews"])


@router.post(
    "/previews",
    response_model=PreviewPublic,
    summary="Generate up to 8 images now",
    responses={
        **COMMON_ERRORS,
        413: problem_doc("Request body too large."),
        415: problem_doc("Not JSON."),
        503: problem_doc("No worker on the interactive queue answered in time."),
    },
    openapi_extra=json_body_openapi(PreviewCreate),
)
async def create_preview(request: Request, services: ServicesDep, tenant: TenantDep) -> PreviewPublic:
    """Generate `count` (≤ 8) images of one category through the `interactive` queue and return them inline.

    With `seed` and `truncation` (ψ) image i is image i of a job with the same model version, seed, category
    and ψ, so a client sees what the job would deliver; the answer names the ψ used.

    At most `CATALOGAN_PREVIEW_MAX_CONCURRENT_PER_TENANT` previews of one tenant wait at once (more: 429 with
    `Retry-After`); a waiting preview holds no thread of the shared pool.
    """
    body = await read_json_body(request, PreviewCreate)  # after the key and the rate limit, off the loop
    threads = services.preview_threads()

    def resolve() -> ModelVersion:
        with services.read_sessions() as session:
            model = resolve_job_model(session, body.model)
            session.expunge(model)
        return model

    model = await anyio.to_thread.run_sync(resolve, limiter=threads)
    assert services.preview_slots is not None
    preview = await run_preview(
        services.send_task,
        services.store,
        model,
        tenant_id=tenant.id,
        category=body.category,
        count=body.count,
        seed=body.seed,
        truncation=body.truncation,
        timeout_seconds=services.settings.preview_timeout_seconds,
        threads=threads,
        slots=services.preview_slots,
        max_concurrent=services.settings.preview_max_concurrent_per_tenant,
        client_gone=request.is_disconnected,
    )
    return PreviewPublic(
        model=ModelVersionRef(name=preview.model_name, version=preview.model_version),
        seed=preview.seed,
        truncation=preview.truncation,
        images=[
            PreviewImagePublic(
                index=image.index, category=image.category, sha256=image.sha256, png_base64=image.png_base64
            )
            for image in preview.images
        ],
    )
