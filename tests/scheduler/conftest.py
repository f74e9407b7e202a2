"""Fixtures of the scheduler tests: the API on real PostgreSQL behind FastAPI's TestClient, tenants with keys,
and a live stack (uvicorn on loopback + a real `catalogan worker` + Redis + SeaweedFS) for end-to-end tests.

    pg_factory          a session factory on this process's PostgreSQL database (emptied per test)
    model_version       a registered production model version `tiny@1` (categories a, b, c), no checkpoint
    make_tenant         a function: name, quotas → Credentials(tenant_id, api_key, webhook_secret)
    tenant              Credentials of tenant "acme"
    published           the (queue, chunk ids) the API published, in order
    api                 a TestClient on the app (memory object store, recording publisher)
    live_stack          a real uvicorn server + a real worker on PostgreSQL, Redis and SeaweedFS S3
    worker_overrides    extra environment for that worker (override it in a test module)
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory, transaction
from db.settings import BrokerSettings, DataSettings, StorageSettings
from db.storage import MemoryStore, ObjectStore
from db.tables import Tenant
from db.tenants import create_api_key, create_tenant
from scheduler.api.app import build_services, create_app
from scheduler.api.limits import MemoryRateLimiter
from scheduler.settings import ApiSettings, WebhookSettings
from scheduler.signatures import new_secret
from tests.pipeline import ServiceProcess, make_model_version, pipeline_env, tiny_checkpoint

MODEL_REF = "tiny@1"


@dataclass(frozen=True)
class Credentials:
    """A tenant as a client knows it."""

    tenant_id: str
    api_key: str
    webhook_secret: str

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header of this tenant's key."""
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture
def pg_factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on the per-process PostgreSQL database."""
    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def model_version(pg_factory: sessionmaker[Session]) -> Any:
    """`tiny@1` in production with categories a, b, c (no checkpoint: API tests never run it)."""
    return make_model_version(pg_factory)


@pytest.fixture
def make_tenant(pg_factory: sessionmaker[Session]) -> Callable[..., Credentials]:
    """Create a tenant with a key and a webhook secret; keyword arguments set its quotas."""

    def make(name: str | None = None, **quotas: Any) -> Credentials:
        secret = new_secret()
        with transaction(pg_factory) as session:
            tenant = create_tenant(session, name or f"t-{uuid.uuid4().hex[:8]}", **quotas)
            session.flush()
            session.execute(update(Tenant).where(Tenant.id == tenant.id).values(webhook_secret=secret))
            key = create_api_key(session, tenant.id, name="test")
        return Credentials(tenant.id, key.clear_key, secret)

    return make


@pytest.fixture
def tenant(make_tenant: Callable[..., Credentials]) -> Credentials:
    """Tenant "acme" with one key."""
    return make_tenant("acme")


@pytest.fixture
def published() -> list[tuple[str, tuple[int, ...]]]:
    """What the API published: (queue, chunk ids) per call."""
    return []


@pytest.fixture
def api_store() -> ObjectStore:
    """The object store behind `api`."""
    return MemoryStore()


def _app(
    factory: sessionmaker[Session],
    store: ObjectStore,
    published: list[tuple[str, tuple[int, ...]]],
    tmp_path: Path,
    settings: ApiSettings,
    webhooks: WebhookSettings,
) -> Any:
    def publish(queue: str, chunk_ids: Any) -> None:
        published.append((queue, tuple(chunk_ids)))

    services = build_services(
        settings,
        webhooks=webhooks,
        broker=BrokerSettings(broker_url=""),
        data=DataSettings(data_dir=tmp_path / "data"),
        storage=StorageSettings(storage_url="memory://"),
        session_factory=factory,
        store=store,
        publisher=publish,
        rate_limiter=MemoryRateLimiter(),
    )
    return create_app(settings, services=services)


@pytest.fixture
def make_api(
    pg_factory: sessionmaker[Session],
    api_store: ObjectStore,
    published: list[tuple[str, tuple[int, ...]]],
    tmp_path: Path,
) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient on the app with given settings (the default ones otherwise)."""
    clients: list[TestClient] = []

    def make(settings: ApiSettings | None = None, webhooks: WebhookSettings | None = None) -> TestClient:
        app = _app(
            pg_factory,
            api_store,
            published,
            tmp_path,
            settings or ApiSettings(),
            webhooks or WebhookSettings(webhook_allow_private_targets=True),
        )
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def api(make_api: Callable[..., TestClient], model_version: Any) -> TestClient:
    """The app with default settings, a registered model and private webhook targets allowed."""
    return make_api()


# --- the live stack --------------------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """uvicorn serving an app on loopback in a thread."""

    def __init__(self, app: Any) -> None:
        # Bound here and handed to uvicorn, so no other process can take the port between choosing and serving
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        """Start and wait until it accepts requests."""
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.socket.close()


def serve_live_api(
    settings: ApiSettings,
    factory: sessionmaker[Session],
    broker_url: str,
    store: ObjectStore,
    tmp_path: Path,
    start: Callable[[Any], LiveServer],
) -> str:
    """Serve the real app (`settings`, PostgreSQL `factory`, the broker at `broker_url`, `store`) with uvicorn
    on loopback through `start` (`live_server_factory`); returns its base URL."""
    services = build_services(
        settings,
        broker=BrokerSettings(broker_url=broker_url),
        data=DataSettings(data_dir=tmp_path / "api-data"),
        storage=StorageSettings(storage_url=store.url),
        session_factory=factory,
        store=store,
    )
    return start(create_app(settings, services=services)).url


@dataclass
class LiveStack:
    """A real API server and a real worker on PostgreSQL, Redis and S3."""

    url: str
    factory: sessionmaker[Session]
    store: ObjectStore
    tenant: Credentials
    worker: ServiceProcess
    webhooks: WebhookSettings


@pytest.fixture
def live_server_factory() -> Iterator[Callable[[Any], LiveServer]]:
    """Start uvicorn servers for apps; all are stopped after the test."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        server = LiveServer(app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def worker_overrides() -> dict[str, str]:
    """Extra CATALOGAN_* variables for the live stack's worker (a test module overrides this fixture)."""
    return {}


@pytest.fixture
def live_stack(
    worker_overrides: dict[str, str],
    pg_url: str,
    pg_factory: sessionmaker[Session],
    redis_url: str,
    s3_store: ObjectStore,
    s3_env: dict[str, str],
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> Iterator[LiveStack]:
    """uvicorn on loopback serving the API, and one `catalogan worker` subprocess, sharing PG, Redis and S3."""
    make_model_version(pg_factory, checkpoint=tiny_checkpoint(seed=1), store=s3_store)
    credentials = make_tenant("acme")
    env = pipeline_env(
        CATALOGAN_DATABASE_URL=pg_url,
        CATALOGAN_STORAGE_URL=s3_store.url,
        CATALOGAN_BROKER_URL=redis_url,
        CATALOGAN_DATA_DIR=str(tmp_path / "worker-data"),
        CATALOGAN_DEVICE="cpu",
        CATALOGAN_UPLOAD_THREADS="2",
        **s3_env,
        **worker_overrides,
    )
    worker = ServiceProcess(["worker", "--queues", "interactive,bulk"], env, tmp_path / "worker.log")
    webhooks = WebhookSettings(webhook_allow_private_targets=True, webhook_backoff_base_seconds=0.2)
    settings = ApiSettings()
    services = build_services(
        settings,
        webhooks=webhooks,
        broker=BrokerSettings(broker_url=redis_url),
        data=DataSettings(data_dir=tmp_path / "api-data"),
        storage=StorageSettings(storage_url=s3_store.url),
        session_factory=pg_factory,
        store=s3_store,
    )
    server = live_server_factory(create_app(settings, services=services))
    try:
        yield LiveStack(server.url, pg_factory, s3_store, credentials, worker, webhooks)
    finally:
        code = worker.stop()
        if os.environ.get("CATALOGAN_TEST_SHOW_WORKER_LOG"):
            print(worker.log())
        assert code in (0, -15, 143), f"worker exited with {code}:\n{worker.log()[-3000:]}"


# --- the console (its helpers live with its tests: tests/scheduler/test_console.py) ---------------------


@pytest.fixture
def console(api: TestClient, tenant: Credentials) -> TestClient:
    """The API's TestClient, signed in to the console with tenant acme's key (its CSRF token in a header
    the app ignores, `X-Test-Csrf`, for the tests to read)."""
    from tests.scheduler.test_console import sign_in

    api.headers["X-Test-Csrf"] = sign_in(api, tenant.api_key)
    return api


@pytest.fixture
def finished(
    pg_factory: sessionmaker[Session], api_store: ObjectStore, tenant: Credentials, model_version: Any
) -> Any:
    """A finished job of tenant acme (a `test_console.FinishedJob`): 6 delivered images, 1 rejected by the gate."""
    from tests.scheduler.test_console import insert_finished_job

    return insert_finished_job(pg_factory, api_store, tenant.tenant_id, model_version)
