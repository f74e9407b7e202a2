"""`POST /v1/previews` under a hostile tenant: waiting previews hold no shared thread, are capped per tenant,
and their broker messages expire with the request. uvicorn on loopback, PostgreSQL, Redis, SeaweedFS; no worker
consumes the `interactive` queue, so every preview waits its whole timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from db.messaging import INTERACTIVE_QUEUE
from db.storage import ObjectStore
from scheduler.settings import ApiSettings
from tests.pipeline import wait_for
from tests.scheduler.conftest import Credentials, LiveServer, serve_live_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREVIEWS = 40
PREVIEW_TIMEOUT_SECONDS = 12.0
# Another tenant's request must not wait for the previews: a few hundred ms on a busy 2-core box, against the
# whole preview timeout (12 s) when the previews hold the shared thread pool.
OTHER_TENANT_MAX_SECONDS = 4.0


def _queued_messages(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(raw) for raw in client.lrange(INTERACTIVE_QUEUE, 0, -1)]
    finally:
        client.close()


def test_forty_waiting_previews_do_not_stall_another_tenant_and_their_messages_expire(
    pg_factory: sessionmaker[Session],
    redis_url: str,
    s3_store: ObjectStore,
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given the API with no worker on `interactive` and tenant A allowed 40 concurrent previews,
    when A holds 40 previews waiting and tenant B then calls /healthz, /readyz and GET /v1/jobs,
    then B's answers come in well under the preview timeout, every preview ends in 503 after it,
    and each of the 40 queued broker messages carries an `expires` no later than the request's end."""
    settings = ApiSettings(
        preview_timeout_seconds=PREVIEW_TIMEOUT_SECONDS, preview_max_concurrent_per_tenant=PREVIEWS
    )
    url = serve_live_api(settings, pg_factory, redis_url, s3_store, tmp_path, live_server_factory)
    a = make_tenant(requests_per_minute=100_000)
    b = make_tenant(requests_per_minute=100_000)

    def preview(_: int) -> int:
        with httpx.Client(base_url=url, timeout=60) as http:
            return http.post(
                "/v1/previews", json={"category": "a", "count": 1}, headers=a.headers
            ).status_code

    started = time.time()
    with ThreadPoolExecutor(PREVIEWS) as pool:
        futures = [pool.submit(preview, i) for i in range(PREVIEWS)]
        # Every preview has published its message and is now waiting for its result
        wait_for(
            lambda: len(_queued_messages(redis_url)) == PREVIEWS,
            timeout=PREVIEW_TIMEOUT_SECONDS / 2,
            what="every preview to be queued",
        )
        other: dict[str, tuple[int, float]] = {}
        with httpx.Client(base_url=url, timeout=60) as http:
            for path in ("/healthz", "/readyz", "/v1/jobs"):
                t0 = time.perf_counter()
                response = http.get(path, headers=b.headers)
                other[path] = (response.status_code, time.perf_counter() - t0)
        statuses = [future.result() for future in futures]

    assert {path: status for path, (status, _) in other.items()} == {
        "/healthz": 200,
        "/readyz": 200,
        "/v1/jobs": 200,
    }
    slow = {
        path: round(seconds, 2) for path, (_, seconds) in other.items() if seconds > OTHER_TENANT_MAX_SECONDS
    }
    assert not slow, f"tenant B waited for tenant A's previews: {slow}"
    assert statuses == [503] * PREVIEWS
    messages = _queued_messages(redis_url)
    assert len(messages) == PREVIEWS
    for message in messages:
        expires = message["headers"].get("expires")
        assert expires is not None, "a preview message never expires"
        from datetime import datetime

        at = datetime.fromisoformat(expires).timestamp()
        assert started < at <= time.time() + 1


def test_a_tenant_over_its_concurrent_previews_gets_a_429_and_another_tenant_does_not(
    pg_factory: sessionmaker[Session],
    redis_url: str,
    s3_store: ObjectStore,
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given a cap of 2 concurrent previews per tenant and no worker,
    when tenant A asks for 4 previews at once and tenant B for 1,
    then 2 of A's are refused at once with 429 and Retry-After, and A's other 2 and B's wait and end in 503."""
    settings = ApiSettings(preview_timeout_seconds=3.0, preview_max_concurrent_per_tenant=2)
    url = serve_live_api(settings, pg_factory, redis_url, s3_store, tmp_path, live_server_factory)
    a, b = make_tenant(), make_tenant()

    def preview(headers: dict[str, str]) -> tuple[int, str | None, float]:
        with httpx.Client(base_url=url, timeout=60) as http:
            t0 = time.perf_counter()
            response = http.post("/v1/previews", json={"category": "a", "count": 1}, headers=headers)
            return response.status_code, response.headers.get("retry-after"), time.perf_counter() - t0

    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(preview, a.headers) for _ in range(4)]
        time.sleep(0.5)
        b_future = pool.submit(preview, b.headers)
        results = [future.result() for future in futures]
        b_result = b_future.result()

    refused = [r for r in results if r[0] == 429]
    assert len(refused) == 2 and all(r[1] is not None and int(r[1]) >= 1 for r in refused)
    assert all(r[2] < 2.0 for r in refused), "a refused preview waited"
    assert sorted(r[0] for r in results if r[0] != 429) == [503, 503]
    assert b_result[0] == 503
    assert len(_queued_messages(redis_url)) == 3  # nothing was sent for the refused ones
