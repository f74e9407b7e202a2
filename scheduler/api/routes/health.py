"""`/healthz` (the process answers), `/readyz` (database, broker, object store answer), `/metrics` (Prometheus)."""

from __future__ import annotations

import hmac
import logging
import time

import anyio
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler.api.deps import Services, ServicesDep
from scheduler.api.limits import LoopThreads
from scheduler.api.schemas import HealthPublic, ReadinessPublic

router = APIRouter(tags=["health"])

READINESS_PROBE_KEY = "healthz/probe"
READINESS_CACHE_SECONDS = 1.0  # a readiness answer is reused this long after its check ended
log = logging.getLogger(__name__)
_METRICS_THREADS = LoopThreads("metrics", 1)


def metrics_threads() -> anyio.CapacityLimiter:
    """One thread for scrapes, never more: concurrent scrapes wait for each other, not the shared pool."""
    return _METRICS_THREADS.limiter()


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


class Readiness:
    """The last readiness check of one app, reused for `cache_seconds`.

    `/readyz` answers anyone, unauthenticated and unlimited, and each check takes a pooled database
    connection, a Redis round trip and an S3 HEAD. So one check runs at a time, on a thread of its own (never
    the shared pool); callers that come while it runs wait for it on the event loop, holding nothing, and get
    its answer, as do those in the `cache_seconds` after it.
    """

    def __init__(self, cache_seconds: float = READINESS_CACHE_SECONDS) -> None:
        self.cache_seconds = cache_seconds
        self._checks: dict[str, str] | None = None
        self._checked_at = 0.0  # time.monotonic() when the last check ended
        self._turn: RunVar[anyio.Lock] = RunVar(f"catalogan_readiness_{id(self)}")

    def _fresh(self) -> dict[str, str] | None:
        if self._checks is not None and time.monotonic() - self._checked_at < self.cache_seconds:
            return self._checks
        return None

    async def checks(self, services: Services) -> dict[str, str]:
        """`check_services` as of at most `cache_seconds` ago."""
        if (checks := self._fresh()) is not None:
            return checks
        turn = self._turn.get(None)
        if turn is None:
            turn = anyio.Lock()
            self._turn.set(turn)
        async with turn:
            if (checks := self._fresh()) is not None:  # made while this caller waited
                return checks
            checks = await anyio.to_thread.run_sync(
                check_services, services, limiter=anyio.CapacityLimiter(1)
            )
            self._checks, self._checked_at = checks, time.monotonic()
            return checks


def readiness(request: Request) -> Readiness:
    """The app's `Readiness` (made at its first check)."""
    found: Readiness | None = getattr(request.app.state, "readiness", None)
    if found is None:
        found = request.app.state.readiness = Readiness()
    return found


@router.get(
    "/readyz",
    response_model=ReadinessPublic,
    summary="Readiness",
    responses={503: {"description": "A backing service did not answer.", "model": ReadinessPublic}},
)
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """200 when the database, the broker and the object store answer; 503 naming the one that did not.

    The answer may be up to a second old: concurrent callers share one check."""
    checks = await readiness(request).checks(services)
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
