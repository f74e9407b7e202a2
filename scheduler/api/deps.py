"""Named dependencies of the routes: the per-process services, a session, the store, the calling tenant.

Routes declare what they need with the aliases below (`SessionDep`, `StoreDep`, `TenantDep`, ...);
FastAPI builds them per request from the `Services` created once in `create_app`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from db.messaging import Publisher, make_celery_app
from db.settings import BrokerSettings, DataSettings
from db.storage.base import ObjectStore
from db.tables import Tenant
from scheduler.api.limits import RateLimiter
from scheduler.errors import AuthenticationError
from scheduler.settings import ApiSettings, WebhookSettings


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
        # The broker's producer pools are kombu globals shared by every app on the same URL: left alone.
        if self.owns_engine:
            bind = self.session_factory.kw.get("bind")
            if bind is not None:
                bind.dispose()


def get_services(request: Request) -> Services:
    """The process's services (stored on the app by `create_app`)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> ApiSettings:
    """The API settings."""
    return services.settings


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    """A session for one request; routes commit explicitly, anything left open is rolled back."""
    with services.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_store(services: ServicesDep) -> ObjectStore:
    """The object store."""
    return services.store


StoreDep = Annotated[ObjectStore, Depends(get_store)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `catalogan keys create`.")


def get_tenant(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant owning the request's API key (`Authorization: Bearer <key>`), after its rate limit.

    Raises `AuthenticationError` (401) for a missing, unknown or revoked key and `RateLimitedError` (429)
    when the tenant is over its requests-per-window limit.
    """
    from db.tenants import authenticate_api_key

    if credentials is None or not credentials.credentials:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    with services.session_factory() as session:
        tenant = authenticate_api_key(session, credentials.credentials)
        session.expunge_all()
    window = services.settings.rate_limit_window_seconds
    limit = max(1, tenant.requests_per_minute * window // 60)
    services.rate_limiter.hit(tenant.id, limit=limit, window_seconds=window)
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]
