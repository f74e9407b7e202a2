"""Idempotency-Key: a replay returns the same job, a different body is a 422, and a race makes one job."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.storage import MemoryStore
from db.tables import Job
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app

BODY = {"items": [{"category": "a", "count": 3, "sku": "SKU-9"}], "seed": 11}


def test_a_replay_returns_the_same_job_marked_replayed(
    api: TestClient, tenant: Credentials, published: list
) -> None:
    """Given a submitted job, when the same body is sent with the same key, then the same job comes back once."""
    headers = {**tenant.headers, "Idempotency-Key": "order-42"}
    first = api.post("/v1/jobs", json=BODY, headers=headers)
    second = api.post("/v1/jobs", json=BODY, headers=headers)

    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert second.status_code == 200 and second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert len(published) == 1  # the replay published nothing


def test_the_same_key_with_a_different_body_is_422(api: TestClient, tenant: Credentials) -> None:
    """Given a key used once, when it comes with another body, then 422 naming the Idempotency-Key."""
    headers = {**tenant.headers, "Idempotency-Key": "order-43"}
    assert api.post("/v1/jobs", json=BODY, headers=headers).status_code == 201
    changed = {**BODY, "seed": 12}
    response = api.post("/v1/jobs", json=changed, headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"


def test_keys_are_scoped_per_tenant(api: TestClient, make_tenant: Callable[..., Credentials]) -> None:
    """Given two tenants using the same key, when both submit, then each gets its own job."""
    a, b = make_tenant(), make_tenant()
    ids = {
        api.post("/v1/jobs", json=BODY, headers={**t.headers, "Idempotency-Key": "shared"}).json()["id"]
        for t in (a, b)
    }
    assert len(ids) == 2


def test_twenty_concurrent_submits_with_one_key_make_one_job(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    tenant: Credentials,
    published: list,
    tmp_path: Path,
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given a real server, when 20 clients submit the same body with one key at once, then one job exists."""
    app = _app(pg_factory, MemoryStore(), published, tmp_path, ApiSettings(), WebhookSettings())
    server = live_server_factory(app)
    headers = {**tenant.headers, "Idempotency-Key": "race-1"}

    def submit(_: int) -> tuple[int, str]:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.post("/v1/jobs", json=BODY, headers=headers)
            return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(submit, range(20)))

    assert sorted(status for status, _ in results) == [200] * 19 + [201]
    assert len({job_id for _, job_id in results}) == 1
    with pg_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
    assert len(published) == 1
