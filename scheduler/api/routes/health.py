"""`/healthz` (the process answers), `/readyz` (database, broker, object store answer), `/metrics` (Prometheus)."""

from __future__ import annotations

import hmac
import logging

import anyio
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler.api.deps import Services, ServicesDep
from scheduler.api.schemas import HealthPublic, ReadinessPublic

router = APIRouter(tags=["health"])

READINESS_PROBE_KEY = "healthz/probe"
log = logging.getLogger(__name__)
_METRICS_THREADS: RunVar[anyio.CapacityLimiter] = RunVar("catalogan_metrics_threads")


def metrics_threads() -> anyio.CapacityLimiter:
    """One thread for scrapes, never more: concurrent scrapes wait for each other, not the shared pool."""
    limiter = _METRICS_THREADS.get(None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(1)
        _METRICS_THREADS.set(limiter)
    return limiter


@router.get("/healthz", response_model=HealthPublic, summary="Liveness")
def healthz() -> HealthPublic:
    """200 while the process serves requests; checks nothing else."""
    return HealthPublic(status="ok")


def check_services(services: Services) -> dict[str, str]:
    """`ok` or `unavailable` per backing service. The reason goes to the log, never to the caller: error text
    names internal hosts, ports and versions, and /readyz answers anyone."""
    checks: dict[str, str] = {}
    probes = {
        "database": lambda: _ping_database(services),
        "broker": lambda: _ping_broker(services),
        "object_store": lambda: services.store.exists(READINESS_PROBE_KEY),
    }
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            log.warning(
                "readiness: %s unavailable: %s", name, str(exc).splitlines()[0][:300] if str(exc) else exc
            )
            checks[name] = "unavailable"
    return checks


def _ping_database(services: Services) -> None:
    with services.read_sessions() as session:
        session.execute(text("SELECT 1"))


def _ping_broker(services: Services) -> None:
    if services.redis is not None:
        services.redis.ping()
    else:
        services.data.resolved.joinpath("broker").mkdir(parents=True, exist_ok=True)


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
    responses={
        200: {"content": {"text/plain": {"example": 'catalogan_queue_depth{queue="bulk"} 12.0\n'}}},
        401: {"description": "`CATALOGAN_METRICS_TOKEN` is set and the request did not carry it."},
    },
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Queue depth, images/s, jobs per status, failures, job latency and HTTP requests, in Prometheus text.

    Fleet-wide figures: when `CATALOGAN_METRICS_TOKEN` is set, only `Authorization: Bearer <that token>` may
    read them. The SQL aggregate behind them is cached for `CATALOGAN_METRICS_CACHE_SECONDS`.
    """
    token = services.settings.metrics_token
    if token:
        sent = request.headers.get("authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise StarletteHTTPException(
                401, "send the metrics token: Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
            )
    registry = request.app.state.metrics_registry
    body = await anyio.to_thread.run_sync(generate_latest, registry, limiter=metrics_threads())
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
