"""`/v1/previews`: try a model on a few images before a bulk job."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from scheduler.api.deps import ServicesDep, TenantDep
from scheduler.api.problems import COMMON_ERRORS, problem_doc
from scheduler.api.schemas import PreviewCreate, PreviewPublic
from scheduler.model_refs import resolve_model_version
from scheduler.previews import run_preview

router = APIRouter(prefix="/v1", tags=["previews"])


@router.post(
    "/previews",
    response_model=PreviewPublic,
    summary="Generate up to 8 images now",
    responses={**COMMON_ERRORS, 503: problem_doc("No worker on the interactive queue answered in time.")},
)
async def create_preview(request: PreviewCreate, services: ServicesDep, tenant: TenantDep) -> PreviewPublic:
    """Generate `count` (≤ 8) images of one category through the `interactive` queue and return them inline."""

    def run() -> PreviewPublic:
        with services.session_factory() as session:
            model = resolve_model_version(session, request.model)
            session.expunge(model)
        return run_preview(
            services.send_task,
            services.store,
            model,
            tenant_id=tenant.id,
            category=request.category,
            count=request.count,
            seed=request.seed,
            timeout_seconds=services.settings.preview_timeout_seconds,
        )

    return await run_in_threadpool(run)
