"""`POST /v1/jobs:estimate` queues with the tenant's submits: one tenant's estimates take its submit turn, are
capped and time-limited with 429s, and their bodies are read only in their turn. uvicorn on loopback and
PostgreSQL; the tenant's row is held locked from the test so its first submit stalls inside its turn."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from scheduler.api.schemas import JobCreate
from scheduler.settings import ApiSettings
from tests.scheduler.conftest import Credentials, LiveServer
from tests.scheduler.test_submit_hostile import (
    _body,
    _serve,
    _tenant_row_locked,
    _wait_until,
    _waiting_on_a_lock,
)

pytestmark = [pytest.mark.integration]

ESTIMATE = {"items": [{"category": "a", "count": 10}]}


def test_a_tenants_estimates_queue_with_its_submits_and_are_capped_with_429s(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a cap of 3 queued submits per tenant, a 2 s wait limit, and tenant A's submit stalled in its turn
    (its row lock held), when A sends 5 estimates at once, then 3 are refused at once with Retry-After 5 (the
    queue is full), the other 2 after the wait limit with Retry-After 2, none of their bodies is parsed, and
    tenant B's estimate meanwhile is a 200."""
    settings = ApiSettings(submit_queue_max_per_tenant=3, submit_wait_seconds=2)
    url = _serve(settings, pg_factory, tmp_path, live_server_factory)
    a, b = make_tenant(requests_per_minute=10_000), make_tenant()
    parsed: list[int] = []
    original = JobCreate.model_validate_json

    def recording(data: Any, *args: Any, **kwargs: Any) -> JobCreate:
        parsed.append(len(data))
        return original(data, *args, **kwargs)

    monkeypatch.setattr(JobCreate, "model_validate_json", recording)

    def post(path: str, credentials: Credentials, body: dict[str, Any]) -> tuple[int, str | None, float]:
        with httpx.Client(base_url=url, timeout=60) as http:
            started = time.monotonic()
            response = http.post(path, json=body, headers=credentials.headers)
            return response.status_code, response.headers.get("retry-after"), time.monotonic() - started

    with ThreadPoolExecutor(8) as pool, _tenant_row_locked(pg_factory, a.tenant_id):
        first = pool.submit(post, "/v1/jobs", a, _body(1))
        _wait_until(lambda: _waiting_on_a_lock(pg_factory) >= 1, 30)  # A's submit, inside its turn
        parsed_before = len(parsed)
        estimates = [pool.submit(post, "/v1/jobs:estimate", a, ESTIMATE) for _ in range(5)]
        other = pool.submit(post, "/v1/jobs:estimate", b, ESTIMATE).result()
        results = [future.result() for future in estimates]
        parsed_while_queued = len(parsed) - parsed_before
    assert first.result()[0] == 201
    assert other[0] == 200
    refused_at_once = [r for r in results if r[0] == 429 and r[1] == "5" and r[2] < 2.0]
    refused_after_waiting = [r for r in results if r[0] == 429 and r[1] == "2" and r[2] >= 1.9]
    assert len(refused_at_once) == 3, results
    assert len(refused_after_waiting) == 2, results
    assert parsed_while_queued == 1  # B's estimate only
