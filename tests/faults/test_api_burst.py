"""A burst of submissions and status reads for one tenant, with few database connections: the API keeps
answering (no request waits on the event loop for a pooled connection) and nothing fails."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from db.settings import BrokerSettings, DataSettings, StorageSettings
from db.storage import MemoryStore
from scheduler.api.app import build_services, create_app
from scheduler.api.limits import MemoryRateLimiter
from scheduler.settings import ApiSettings
from tests.faults.load import LiveApi, load_tenant_headers
from tests.pipeline import make_model_version

CLIENTS = 30
POOL_SIZE = 2  # at most 4 connections: the burst must queue for them
HEALTH_MAX_SECONDS = 5.0


@pytest.fixture
def small_pool_factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on an engine with a 2 + 2 connection pool."""
    engine = make_engine(pg_url, pool_size=POOL_SIZE)
    yield make_session_factory(engine)
    engine.dispose()


def test_a_burst_for_one_tenant_never_stalls_the_api(
    small_pool_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    # Given the API on a small connection pool, and one tenant
    make_model_version(small_pool_factory)
    published: list[Any] = []
    services = build_services(
        ApiSettings(),
        broker=BrokerSettings(broker_url=""),
        data=DataSettings(data_dir=tmp_path / "api-data"),
        storage=StorageSettings(storage_url="memory://"),
        session_factory=small_pool_factory,
        store=MemoryStore(),
        publisher=lambda queue, ids: published.append(ids),
        rate_limiter=MemoryRateLimiter(),
    )
    api = LiveApi(create_app(ApiSettings(), services=services)).start()
    _, headers = load_tenant_headers(small_pool_factory)

    def client(i: int) -> list[int]:
        with httpx.Client(base_url=api.url, headers=headers, timeout=60) as http:
            created = http.post("/v1/jobs", json={"items": [{"category": "a", "count": 1}], "seed": i})
            codes = [created.status_code]
            if created.status_code == 201:
                codes += [http.get(f"/v1/jobs/{created.json()['id']}").status_code for _ in range(3)]
            return codes

    health: list[float] = []
    try:
        # When 30 clients submit a job each and read it back 3 times, all at once, while a probe reads /healthz
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            futures = [pool.submit(client, i) for i in range(CLIENTS)]
            with httpx.Client(base_url=api.url, timeout=60) as probe:
                while not all(future.done() for future in futures):
                    started = time.perf_counter()
                    probe.get("/healthz")
                    health.append(time.perf_counter() - started)
                    time.sleep(0.1)
            codes = [code for future in futures for code in future.result()]
    finally:
        api.stop()
    # Then every request succeeded, every job was published once, and /healthz never waited long
    assert codes.count(201) == CLIENTS and codes.count(200) == 3 * CLIENTS, sorted(set(codes))
    assert len(published) == CLIENTS
    assert max(health) < HEALTH_MAX_SECONDS, f"/healthz took up to {max(health):.1f} s"
