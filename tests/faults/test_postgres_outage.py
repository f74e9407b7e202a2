"""PostgreSQL unreachable mid-job (a TCP relay in front of it is cut): the API answers 503 on writes and
publishes nothing; once it is back, the job completes and nothing is left running."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, make_url, select

from db.engine import transaction
from db.settings import BrokerSettings, DataSettings, StorageSettings
from db.status import ChunkStatus
from db.storage import ObjectStore
from db.tables import Chunk, Job
from db.tenants import create_api_key
from scheduler.api.app import build_services, create_app
from scheduler.api.limits import MemoryRateLimiter
from scheduler.settings import ApiSettings
from tests.faults.checks import assert_exactly_once
from tests.faults.conftest import FULL
from tests.faults.services import TcpProxy
from tests.pipeline import PipelineStack, wait_for

IMAGES = 1200
# The 30 s outage under CATALOGAN_FAULTS_FULL=1; a shorter one (still past the 3 s lease) in CI.
OUTAGE_SECONDS = 30.0 if FULL else 6.0
ATTEMPTS = "10"  # each outage costs the chunks in progress an attempt
JOB = {"items": [{"category": "a", "count": 2}], "seed": 1}


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[TcpProxy]:
    """A TCP relay in front of the test's PostgreSQL server."""
    url = make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_stack(
    pg_url: str,
    pg_proxy: TcpProxy,
    redis_url: str,
    s3_store: ObjectStore,
    s3_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[PipelineStack]:
    """The pipeline with every database connection (workers, reaper, API, the test) through the relay."""
    url = make_url(pg_url).set(port=pg_proxy.port).render_as_string(hide_password=False)
    pipeline = PipelineStack(db_url=url, redis_url=redis_url, store=s3_store, s3_env=s3_env, folder=tmp_path)
    yield pipeline
    pipeline.close()


def _api(stack: PipelineStack, published: list[Any], tmp_path: Path) -> tuple[TestClient, dict[str, str]]:
    with transaction(stack.session_factory) as session:
        key = create_api_key(session, stack.tenant_id, name="outage").clear_key
    services = build_services(
        ApiSettings(),
        broker=BrokerSettings(broker_url=""),
        data=DataSettings(data_dir=tmp_path / "api-data"),
        storage=StorageSettings(storage_url="memory://"),
        session_factory=stack.session_factory,
        store=stack.store,
        publisher=lambda queue, ids: published.append((queue, list(ids))),
        rate_limiter=MemoryRateLimiter(),
    )
    client = TestClient(create_app(ApiSettings(), services=services), raise_server_exceptions=False)
    return client, {"Authorization": f"Bearer {key}"}


def test_postgres_unreachable_mid_job_503s_publishes_nothing_and_leaves_nothing_running(
    proxied_stack: PipelineStack, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    stack = proxied_stack
    published: list[Any] = []
    api, headers = _api(stack, published, tmp_path)
    # Given a worker and the reaper with a job in progress, and the API
    stack.start("worker", CATALOGAN_MAX_ATTEMPTS=ATTEMPTS)
    stack.start("beat", CATALOGAN_MAX_ATTEMPTS=ATTEMPTS)
    job_id = stack.submit({"items": [{"category": "b", "count": IMAGES}], "chunk_size": 100, "seed": 71})
    wait_for(lambda: stack.job(job_id).images_done >= 200, timeout=120, what="some finished chunks")
    # When PostgreSQL becomes unreachable for the outage
    pg_proxy.cut()
    cut_at = time.monotonic()
    statuses = []
    while time.monotonic() - cut_at < OUTAGE_SECONDS:
        response = api.post("/v1/jobs", json=JOB, headers=headers)
        statuses.append((response.status_code, response.headers.get("content-type", "")))
        assert response.status_code != 503 or int(response.headers["retry-after"]) >= 1
        time.sleep(1)
    pg_proxy.restore()
    # Then every submission was answered 503 as a problem, and nothing was published for them
    assert statuses and all(status == 503 for status, _ in statuses), statuses
    assert all(kind.startswith("application/problem+json") for _, kind in statuses)
    assert published == []
    # And once PostgreSQL is back the job completes exactly, with no chunk left leased
    stack.wait_terminal(job_id, timeout=240)
    assert_exactly_once(stack, job_id, IMAGES)
    with stack.session_factory() as session:
        assert (
            session.scalar(select(func.count()).select_from(Chunk).where(Chunk.status == ChunkStatus.LEASED))
            == 0
        )
        assert session.scalar(select(func.count()).select_from(Job)) == 1  # no job half-made by the 503s
    # And the API accepts writes again
    assert api.post("/v1/jobs", json=JOB, headers=headers).status_code == 201
    assert len(published) == 1
    api.close()
