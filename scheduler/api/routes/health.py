"""`/healthz` (the process answers), `/readyz` (database, broker, object store answer), `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from scheduler.api.deps import Services, ServicesDep
from scheduler.api.schemas import HealthPublic, ReadinessPublic

router = APIRouter(tags=["health"])

READINESS_PROBE_KEY = "healthz/probe"


@router.get("/healthz", response_model=HealthPublic, summary="Liveness")
def healthz() -> HealthPublic:
    """200 while the process serves requests; checks nothing else."""
    return HealthPublic(status="ok")


def check_services(services: Services) -> dict[str, str]:
    """`ok` or the first line of the error, per backing service."""
    checks: dict[str, str] = {}
    try:
        with services.session_factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {str(exc).splitlines()[0][:200]}"
    try:
        if services.redis is not None:
            services.redis.ping()
        else:
            services.data.resolved.joinpath("broker").mkdir(parents=True, exist_ok=True)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {str(exc).splitlines()[0][:200]}"
    try:
        services.store.exists(READINESS_PROBE_KEY)
        checks["object_store"] = "ok"
    except Exception as exc:
        checks["object_store"] = f"error: {str(exc).splitlines()[0][:200]}"
    return checks


@router.get(
    "/readyz",
    response_model=ReadinessPublic,
    summary="Readiness",
    responses={503: {"description": "A backing service did not answer.", "model": ReadinessPublic}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 when the database, the broker and the object store answer; 503 naming the one that did not."""
    checks = await run_in_threadpool(check_services, services)
    ready = all(value == "ok" for value in checks.values())
    body = ReadinessPublic(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"example": 'catalogan_queue_depth{queue="bulk"} 12.0\n'}}}},
)
async def metrics(request: Request) -> Response:
    """Queue depth, images/s, jobs per status, failures, job latency and HTTP requests, in Prometheus text."""
    registry = request.app.state.metrics_registry
    body = await run_in_threadpool(generate_latest, registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
