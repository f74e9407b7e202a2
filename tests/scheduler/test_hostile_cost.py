"""Issue 12 finding 8, against the API on PostgreSQL (and Redis for the messages): work a job makes is counted
before it is accepted — quality-gate redraws in the daily quota, small items packed into chunks, and a bound
on the chunks (broker messages) one job may publish."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.settings import BrokerSettings, DataSettings, StorageSettings
from db.storage import MemoryStore
from db.tables import Chunk, Job, JobItem
from scheduler.api.app import build_services, create_app
from scheduler.api.limits import MemoryRateLimiter
from scheduler.settings import ApiSettings
from tests.scheduler.conftest import Credentials

GREEDY_GATE = {"min_confidence": 1.0, "max_redraws": 16}


def _count(session: Session, table: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_redraws_count_in_the_daily_quota(
    api: TestClient, make_tenant: Callable[..., Credentials], pg_factory: sessionmaker[Session]
) -> None:
    """Given a tenant allowed 5 images a day, when it asks for 1 image with 16 redraws allowed (17 generations),
    then 422 naming quality_gate.max_redraws and the rule images_per_day, and nothing is written (before: 201)."""
    tenant = make_tenant(images_per_day=5)
    response = api.post(
        "/v1/jobs",
        json={"items": [{"category": "a", "count": 1}], "quality_gate": GREEDY_GATE},
        headers=tenant.headers,
    )
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("quality_gate.max_redraws", "images_per_day")
    assert "17 generations" in error["message"] and "5 images per day" in error["message"]
    assert "retry-after" not in response.headers
    with pg_factory() as session:
        assert _count(session, Job) == 0 and _count(session, Chunk) == 0


def test_a_gated_job_reserves_its_worst_case_and_the_job_view_and_estimate_show_it(
    api: TestClient, make_tenant: Callable[..., Credentials]
) -> None:
    """Given a quota of 20, when a job of 4 images with max_redraws 3 is estimated and submitted, then both
    report quota_cost 16; a job of 5 more images is then a 429 (16 + 5 > 20), and a job of 4 fits exactly."""
    tenant = make_tenant(images_per_day=20)
    spec = {
        "items": [{"category": "a", "count": 4}],
        "quality_gate": {"min_confidence": 0.5, "max_redraws": 3},
    }
    estimate = api.post("/v1/jobs:estimate", json=spec, headers=tenant.headers)
    assert estimate.status_code == 200, estimate.text
    assert (estimate.json()["images"], estimate.json()["quota_cost"]) == (4, 16)
    created = api.post("/v1/jobs", json=spec, headers=tenant.headers)
    assert created.status_code == 201, created.text
    assert created.json()["quota_cost"] == 16
    shown = api.get(f"/v1/jobs/{created.json()['id']}", headers=tenant.headers).json()
    assert (shown["quota_cost"], shown["counts"]["images_total"]) == (16, 4)
    over = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 5}]}, headers=tenant.headers)
    assert over.status_code == 429, over.text
    assert "this job costs 5" in over.json()["detail"] and int(over.headers["retry-after"]) > 0
    fits = api.post("/v1/jobs", json={"items": [{"category": "b", "count": 4}]}, headers=tenant.headers)
    assert fits.status_code == 201, fits.text
    assert fits.json()["quota_cost"] == 4


def test_a_job_over_the_chunk_bound_is_refused_before_anything_is_written(
    make_api: Callable[..., TestClient],
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    published: list[tuple[str, tuple[int, ...]]],
) -> None:
    """Given an operator bound of 10 chunks a job, when a job of 100 images asks for chunks of 5 (20 chunks),
    then 422 naming chunk_size and the rule max_chunks_per_job, no row, nothing published (items when no chunk
    size fits); the same images in chunks of 10 are accepted."""
    api = make_api(ApiSettings(max_chunks_per_job=10))
    tenant = make_tenant()
    spec: dict[str, Any] = {"items": [{"category": "a", "count": 100}], "chunk_size": 5}
    response = api.post("/v1/jobs", json=spec, headers=tenant.headers)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("chunk_size", "max_chunks_per_job")
    assert "20 chunks" in error["message"] and "at most 10" in error["message"]
    with pg_factory() as session:
        assert _count(session, Job) == 0 and _count(session, JobItem) == 0 and _count(session, Chunk) == 0
    assert published == []
    # And 100,000 images make 25 chunks even at the largest chunk_size: then the error names items
    huge = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 100_000}]}, headers=tenant.headers)
    assert huge.status_code == 422, huge.text
    huge_error = huge.json()["errors"][0]
    assert (huge_error["field"], huge_error["rule"]) == ("items", "max_chunks_per_job")
    assert "25 chunks even at the largest chunk_size" in huge_error["message"]
    created = api.post("/v1/jobs", json={**spec, "chunk_size": 10}, headers=tenant.headers)
    assert created.status_code == 201, created.text
    assert created.json()["counts"]["chunks_total"] == 10


def test_an_estimate_is_held_to_the_submits_bounds_before_anything_is_counted(
    api: TestClient, model_version: Any, make_tenant: Callable[..., Credentials]
) -> None:
    """Given the API's default bounds, when a tenant asks POST /v1/jobs:estimate for 1,000 items of 100,000
    images at one image a chunk (10^8 chunks; before, counted one by one on a pooled thread while holding a
    session slot), then the submit's 422 naming items and max_images_per_job; 100,000 images at one a chunk
    (100,000 chunks) is the submit's 422 naming chunk_size; the same images at a chunk size that fits are
    estimated."""
    tenant = make_tenant()
    huge = {"chunk_size": 1, "items": [{"category": "a", "count": 100_000}] * 1_000}
    for path in ("/v1/jobs:estimate", "/v1/jobs"):
        response = api.post(path, json=huge, headers=tenant.headers)
        assert response.status_code == 422, response.text
        error = response.json()["errors"][0]
        assert (error["field"], error["rule"]) == ("items", "max_images_per_job"), path
    chunky = {"chunk_size": 1, "items": [{"category": "a", "count": 100_000}]}
    response = api.post("/v1/jobs:estimate", json=chunky, headers=tenant.headers)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("chunk_size", "max_chunks_per_job")
    assert "100000 chunks" in error["message"]
    fits = api.post("/v1/jobs:estimate", json={**chunky, "chunk_size": 1000}, headers=tenant.headers)
    assert fits.status_code == 200, fits.text
    assert (fits.json()["images"], fits.json()["chunks"]) == (100_000, 100)


def test_100000_one_image_items_make_one_message_per_chunk_of_images_not_per_item(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Given the API publishing to a real Redis, when a tenant submits 100,000 one-image SKU items (the 9 MiB
    request of the finding), then the job has ceil(100,000 / 256) = 391 chunks (before: 100,000), of which the
    tenant's publish window, 32, wait as messages in the bulk queue (before: 100,000 messages); every item
    keeps its own row and index."""
    settings = ApiSettings()
    services = build_services(
        settings,
        broker=BrokerSettings(broker_url=redis_url),
        data=DataSettings(data_dir=tmp_path / "data"),
        storage=StorageSettings(storage_url="memory://"),
        session_factory=pg_factory,
        store=MemoryStore(),
        rate_limiter=MemoryRateLimiter(),
    )
    tenant = make_tenant()
    items = [{"category": "abc"[n % 3], "sku": f"SKU-{n:06d}", "count": 1} for n in range(100_000)]
    with TestClient(create_app(settings, services=services), raise_server_exceptions=False) as api:
        response = api.post("/v1/jobs", json={"items": items}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    assert response.json()["counts"]["chunks_total"] == 391
    with pg_factory() as session:
        assert _count(session, Chunk) == 391 and _count(session, JobItem) == 100_000
        sizes = session.execute(select(Chunk.start_index, Chunk.stop_index).order_by(Chunk.start_index)).all()
    assert sizes[0] == (0, 256) and sizes[-1] == (390 * 256, 100_000)
    assert redis.Redis.from_url(redis_url).llen("bulk") == 32  # CATALOGAN_PUBLISH_WINDOW_CHUNKS; the rest follow
