"""The FastAPI application factory: `create_app(settings...)` builds the services once and mounts the routers.

    uvicorn --factory scheduler.api.app:create_app      # or: catalogan serve

Everything the app talks to is built here from typed settings (or passed in by tests): the SQL session
factory, the object store, the chunk publisher, Redis (when the broker is Redis) and the rate limiter.
Nothing here imports torch, `models` or `workers`; tasks are sent by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sqlalchemy.orm import Session, sessionmaker

from db.engine import engine_from_settings, make_session_factory
from db.errors import ConfigError
from db.messaging import CeleryPublisher, Publisher, make_celery_app, queue_depth
from db.settings import (
    BrokerSettings,
    DatabaseSettings,
    DataSettings,
    StorageSettings,
    default_credential_problems,
)
from db.storage import open_store
from db.storage.base import ObjectStore
from scheduler.api.deps import Services
from scheduler.api.limits import BodySizeLimitMiddleware, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from scheduler.api.openapi_extras import document_webhooks, operation_id
from scheduler.api.problems import install_problem_handlers, problem_response
from scheduler.api.routes import health, images, jobs, models, previews, shards
from scheduler.api.schemas import JobCreate, PreviewCreate
from scheduler.console import install_console
from scheduler.errors import PayloadTooLargeError
from scheduler.metrics import make_registry
from scheduler.settings import ApiSettings, WebhookSettings

API_VERSION = "1.0.0"
DESCRIPTION = """
Bulk e-commerce product images from class-conditional GANs.

Authenticate with `Authorization: Bearer <api key>` (keys come from `catalogan keys create`).
Errors are `application/problem+json` (RFC 9457); a 422 lists each broken `field` and its `rule`.
Limits: `429` with `Retry-After` for rate limits and quotas, `413` for bodies over the size limit.
"""


# Paths whose bodies are always small get a tighter bound than CATALOGAN_MAX_REQUEST_BYTES: the console's forms
# are parsed before its routes check the session (a review form is at most ~60 KiB: 1,000 indices and a note),
# and a preview's JSON is a few fields.
SMALL_BODY_PATHS = (("/console/", 256 * 1024), ("/v1/previews", 16 * 1024))


def _too_large(scope: Any, limit: int) -> Any:
    return problem_response(
        413,
        "payload-too-large",
        "Request body too large",
        str(PayloadTooLargeError(limit)),
        instance=scope["path"],
    )


COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestCounterMiddleware:
    """Counts answered requests per method, route template and status for `/metrics`."""

    def __init__(self, app: Any, counter: Any) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            # The method is the client's token (HTTP allows any): a fixed set of label values, or every made-up
            # method would add a time series to this process and to Prometheus.
            method = scope["method"] if scope["method"] in COUNTED_METHODS else "other"
            self.counter.labels(method, template, str(status["code"])).inc()


class NulPathMiddleware:
    """A path with a NUL character (`/v1/jobs/a%00b`) names nothing: 404 before any route hands it to
    PostgreSQL, whose text cannot hold NUL (the query would fail as a 500)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "\x00" in scope.get("path", ""):
            response = problem_response(
                404, "not-found", "Not found", "the path contains a NUL character", instance=""
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def refuse_embedded_defaults(
    database: DatabaseSettings, storage: StorageSettings, broker: BrokerSettings
) -> None:
    """In production, refuse the embedded defaults: a SQLite file, a local or in-memory store, a folder broker.

    They are right for one machine and wrong behind several API replicas (each would see its own data).
    """
    problems = []
    if not database.database_url or database.database_url.startswith("sqlite"):
        problems.append("CATALOGAN_DATABASE_URL must name a PostgreSQL database")
    if not storage.storage_url.startswith("s3://"):
        problems.append("CATALOGAN_STORAGE_URL must be an s3:// URL")
    if broker.embedded:
        problems.append("CATALOGAN_BROKER_URL must name a Redis broker")
    problems += default_credential_problems(database)
    if problems:
        raise ConfigError("CATALOGAN_ENVIRONMENT=production: " + "; ".join(problems))


def build_services(
    settings: ApiSettings,
    *,
    webhooks: WebhookSettings | None = None,
    database: DatabaseSettings | None = None,
    storage: StorageSettings | None = None,
    broker: BrokerSettings | None = None,
    data: DataSettings | None = None,
    session_factory: sessionmaker[Session] | None = None,
    store: ObjectStore | None = None,
    publisher: Publisher | None = None,
    rate_limiter: RateLimiter | None = None,
) -> Services:
    """The per-process services, from settings (read from the environment when not given)."""
    data = data or DataSettings()
    storage = storage or StorageSettings()
    broker = broker or BrokerSettings()
    database = database or DatabaseSettings()
    if settings.environment == "production":
        refuse_embedded_defaults(database, storage, broker)
    redis_client = None
    if not broker.embedded and broker.broker_url.startswith(("redis://", "rediss://")):
        import redis

        redis_client = redis.Redis.from_url(broker.broker_url, socket_timeout=5, socket_connect_timeout=5)
    celery_app = make_celery_app(broker, data)
    return Services(
        settings=settings,
        webhooks=webhooks or WebhookSettings(),
        broker=broker,
        data=data,
        session_factory=session_factory
        or make_session_factory(engine_from_settings(database or DatabaseSettings(), data)),
        store=store or open_store(storage.url(data)),
        publisher=publisher or CeleryPublisher(celery_app),
        rate_limiter=rate_limiter
        or (RedisRateLimiter(redis_client) if redis_client else MemoryRateLimiter()),
        presign_ttl_seconds=storage.presigned_url_ttl_seconds,
        celery_app=celery_app,
        redis=redis_client,
        owns_engine=session_factory is None,
    )


# Bodies that routes read themselves (`read_json_body`, after the API key): FastAPI does not see them as
# parameters, so their schemas are added to the document's components here.
SELF_READ_BODIES: tuple[type[BaseModel], ...] = (JobCreate, PreviewCreate)


def document_self_read_bodies(app: FastAPI) -> None:
    """Add the schemas of `SELF_READ_BODIES` (and the models they use) to the OpenAPI components, in
    validation mode as FastAPI names a request body's; a schema the document already has is kept."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        _, top = models_json_schema(
            [(model, "validation") for model in SELF_READ_BODIES], ref_template="#/components/schemas/{model}"
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in top.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        document["components"]["schemas"] = dict(sorted(schemas.items()))
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def publish_operator_bounds(app: FastAPI, settings: ApiSettings) -> None:
    """State the operator's bounds in the OpenAPI document where they are tighter than the schema's own:
    `retention_days` at most CATALOGAN_MAX_JOB_RETENTION_DAYS (a larger value is a 422)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        retention = document["components"]["schemas"]["JobCreate"]["properties"]["retention_days"]
        for option in retention.get("anyOf", [retention]):
            if option.get("type") == "integer":
                option["maximum"] = settings.max_job_retention_days
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: ApiSettings | None = None, *, services: Services | None = None, **overrides: Any
) -> FastAPI:
    """The catalogan API. `services` (or keyword overrides for `build_services`) replace what settings would build."""
    settings = settings or (services.settings if services else ApiSettings())
    services = services or build_services(settings, **overrides)
    built = services

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        built.close()

    app = FastAPI(
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        title="catalogan",
        version=API_VERSION,
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "jobs", "description": "Submit and follow bulk image jobs."},
            {"name": "images", "description": "A job's images (presigned URLs) and manifest."},
            {"name": "models", "description": "Registered generator versions."},
            {"name": "previews", "description": "A few images right away."},
            {"name": "health", "description": "Liveness, readiness, metrics."},
        ],
    )
    app.state.services = services
    celery_app = services.celery_app
    depth = None
    if services.redis is not None:
        redis_client = services.redis

        def depth(queue: str) -> int:
            return int(redis_client.llen(queue))
    elif celery_app is not None:

        def depth(queue: str) -> int:
            return queue_depth(celery_app, queue)

    registry, requests = make_registry(
        services.read_sessions, depth, settings.default_images_per_second, settings.metrics_cache_seconds
    )
    app.state.metrics_registry = registry
    install_problem_handlers(app)
    for module in (jobs, images, shards, models, previews, health):
        app.include_router(module.router)
    install_console(app, services)  # the web console under /console/ (scheduler.console)
    document_webhooks(app)
    document_self_read_bodies(app)
    publish_operator_bounds(app, settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(NulPathMiddleware)
    app.add_middleware(RequestCounterMiddleware, counter=requests)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        on_too_large=_too_large,
        path_limits=SMALL_BODY_PATHS,
    )
    return app
