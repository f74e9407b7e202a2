"""Named dependencies of the routes: the per-process services, a session, the store, the calling tenant.

Routes declare what they need with the aliases below (`SessionDep`, `StoreDep`, `TenantDep`, ...);
FastAPI builds them per request from the `Services` created once in `create_app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from anyio.lowlevel import RunVar
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import QueuePool
from sqlalchemy.orm import Session, sessionmaker

from db.engine import read_only_session_factory
from db.errors import AuthenticationError
from db.messaging import Publisher, make_celery_app
from db.settings import BrokerSettings, DataSettings
from db.storage.base import ObjectStore
from db.tables import Tenant
from scheduler.api.auth_gate import AuthGate
from scheduler.api.limits import (
    ConcurrencyLimiter,
    LoopThreads,
    MemoryConcurrencyLimiter,
    RateLimiter,
    RedisConcurrencyLimiter,
)
from scheduler.settings import ApiSettings, WebhookSettings
from scheduler.submission import TenantSubmitLocks
from scheduler.webhooks import SubmitResolver


@dataclass
class Services:
    """Everything a request may use, built once per process in `create_app`."""

    settings: ApiSettings
    webhooks: WebhookSettings
    broker: BrokerSettings
    session_factory: sessionmaker[Session]
    store: ObjectStore
    publisher: Publisher
    rate_limiter: RateLimiter
    presign_ttl_seconds: int = 3600
    celery_app: Any | None = None  # sends previews by task name; built lazily when None
    redis: Any | None = None  # a redis.Redis when the broker is Redis (queue depths, readiness, rate limits)
    data: DataSettings = field(default_factory=DataSettings)
    owns_engine: bool = False  # True when build_services made the engine (then close() disposes it)
    submit_locks: TenantSubmitLocks = field(default_factory=TenantSubmitLocks)
    preview_slots: ConcurrencyLimiter | None = None  # per-tenant previews in progress; built in __post_init__
    webhook_resolver: SubmitResolver | None = None  # submit-time webhook host lookups; built in __post_init__
    # Sessions for requests that only read: on SQLite their transactions begin DEFERRED and take no lock, so
    # an embedded API answers reads while a worker or a submit holds the one write lock (built in __post_init__).
    read_sessions: sessionmaker[Session] = field(init=False, repr=False)
    _session_slots: RunVar[anyio.Semaphore] | None = field(default=None, init=False, repr=False)
    _session_slot_count: int = field(default=0, init=False, repr=False)
    _preview_threads: LoopThreads | None = field(default=None, init=False, repr=False)
    auth_gate: AuthGate = field(init=False, repr=False)  # key and session checks (scheduler/api/auth_gate.py)

    def __post_init__(self) -> None:
        self.read_sessions = read_only_session_factory(self.session_factory)
        self.auth_gate = AuthGate(
            threads=self.settings.auth_threads,
            failures_per_window=self.settings.auth_failures_per_window,
            window_seconds=self.settings.rate_limit_window_seconds,
        )
        count = session_slot_count(self.session_factory)
        if count is not None:
            self._session_slots = RunVar(f"catalogan_session_slots_{id(self)}")
            self._session_slot_count = count
        self._preview_threads = LoopThreads("preview", self.settings.preview_threads)
        if self.webhook_resolver is None:
            self.webhook_resolver = SubmitResolver(
                timeout_seconds=self.webhooks.webhook_resolve_timeout_seconds
            )
        if self.preview_slots is None:
            self.preview_slots = (
                RedisConcurrencyLimiter(self.redis, "previews")
                if self.redis is not None
                else MemoryConcurrencyLimiter("previews")
            )

    def preview_threads(self) -> anyio.CapacityLimiter:
        """This event loop's own small thread pool for previews (broker send, result polls), so that waiting
        previews never take threads of the shared pool that every sync route needs."""
        assert self._preview_threads is not None
        return self._preview_threads.limiter()

    def session_slots(self) -> anyio.Semaphore | None:
        """This event loop's semaphore bounding the open request sessions (None: the pool never makes one wait)."""
        if self._session_slots is None:
            return None
        slots = self._session_slots.get(None)
        if slots is None:
            slots = anyio.Semaphore(self._session_slot_count)
            self._session_slots.set(slots)
        return slots

    @asynccontextmanager
    async def session_slot(self) -> AsyncIterator[None]:
        """Hold one of this event loop's request-session slots (`session_slots`) for the block, taken on the loop."""
        slots = self.session_slots()
        if slots is None:
            yield
            return
        async with slots:
            yield

    def celery(self) -> Any:
        """The Celery app used to send tasks by name (built on first use; no worker code is imported)."""
        if self.celery_app is None:
            self.celery_app = make_celery_app(self.broker, self.data)
        return self.celery_app

    def send_task(self, name: str, **kwargs: Any) -> Any:
        """Send a task by name (e.g. a preview to the `interactive` queue)."""
        return self.celery().send_task(name, **kwargs)

    def close(self) -> None:
        """Release connections at shutdown: Redis, and an engine this process built."""
        if self.redis is not None:
            self.redis.close()
        if self.webhook_resolver is not None:
            self.webhook_resolver.executor.shutdown(wait=False, cancel_futures=True)
        # The broker's producer pools are kombu globals shared by every app on the same URL: left alone.
        if self.owns_engine:
            bind = self.session_factory.kw.get("bind")
            if bind is not None:
                bind.dispose()


def session_slot_count(factory: sessionmaker[Session]) -> int | None:
    """How many request sessions may be open at once: a quarter of the pool (at least one connection) stays
    free for the work that takes and returns a connection inside one thread; None for an unbounded pool."""
    pool = getattr(factory.kw.get("bind"), "pool", None)
    if not isinstance(pool, QueuePool):
        return None
    max_overflow = int(getattr(pool, "_max_overflow", 0))  # no public getter
    if max_overflow < 0:
        return None
    capacity = pool.size() + max_overflow
    return max(1, capacity - max(1, capacity // 4))


def get_services(request: Request) -> Services:
    """The process's services (stored on the app by `create_app`)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> ApiSettings:
    """The API settings."""
    return services.settings


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


async def get_session(services: ServicesDep) -> AsyncIterator[Session]:
    """A read-only session for one request (`Services.read_sessions`); routes that write open a `transaction`
    of `services.session_factory` instead.

    A sync route's session keeps its connection until FastAPI has serialized the response, which it does in
    the shared thread pool. Unbounded, every pooled connection could end up waiting for a thread while every
    thread waits for a connection, until the pool timeout (seen with 200 clients polling). So a request
    first takes one of `session_slot_count` slots, on the event loop, and the close runs on a thread of its
    own (a fresh limiter, as FastAPI does for the exit of a sync dependency) rather than the shared pool.
    """
    async with services.session_slot():
        session = services.read_sessions()
        try:
            yield session
        finally:
            await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session)]


def get_store(services: ServicesDep) -> ObjectStore:
    """The object store."""
    return services.store


StoreDep = Annotated[ObjectStore, Depends(get_store)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `catalogan keys create`.")


async def get_tenant(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant owning the request's API key (`Authorization: Bearer <key>`), after its rate limit.

    Raises `AuthenticationError` (401) for a missing, unknown or revoked key and `RateLimitedError` (429)
    when the tenant is over its requests-per-window limit, or the client's address over its failed checks
    (before any lookup). The lookup runs on the authentication threads (`Services.auth_gate`), never the
    shared pool: made-up keys cannot take the threads every tenant's sync routes need.
    """
    from db.tenants import authenticate_api_key

    if credentials is None or not credentials.credentials:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    clear_key = credentials.credentials

    def check() -> Tenant:
        with services.read_sessions() as session:
            tenant = authenticate_api_key(session, clear_key)
            session.expunge_all()
        window = services.settings.rate_limit_window_seconds
        limit = max(1, tenant.requests_per_minute * window // 60)
        services.rate_limiter.hit(tenant.id, limit=limit, window_seconds=window)
        return tenant

    return await services.auth_gate.run(request.client.host if request.client else None, check)


TenantDep = Annotated[Tenant, Depends(get_tenant)]
