"""Authentication (401) and limits: body size (413), bounds (422), rate limits and quotas (429 + Retry-After)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.storage import MemoryStore
from db.tables import ApiKey
from db.tenants import revoke_api_key
from scheduler.api.limits import MemoryRateLimiter
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app

JOB = {"items": [{"category": "a", "count": 2}], "seed": 1}


def assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["type"].startswith("urn:catalogan:problem:")
    return body


def test_a_request_without_a_key_is_401(api: TestClient) -> None:
    """Given no Authorization header, when listing jobs, then 401 with a Bearer challenge."""
    response = api.get("/v1/jobs")
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_malformed_or_unknown_key_is_401(api: TestClient) -> None:
    """Given keys that were never issued, when used, then 401 and the key is not echoed."""
    for key in ("nonsense", "cg_000000000000_" + "x" * 43):
        body = assert_problem(api.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}), 401)
        assert key not in body["detail"]


def test_a_revoked_key_is_401_at_once(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given a working key, when it is revoked, then the next request with it is 401."""
    assert api.get("/v1/jobs", headers=tenant.headers).status_code == 200
    with transaction(pg_factory) as session:
        key_id = session.query(ApiKey.id).filter(ApiKey.tenant_id == tenant.tenant_id).scalar()
        revoke_api_key(session, key_id)
    body = assert_problem(api.get("/v1/jobs", headers=tenant.headers), 401)
    assert "revoked" in body["detail"]


def test_a_body_over_the_limit_is_413(
    make_api: Callable[..., TestClient], model_version: object, tenant: Credentials
) -> None:
    """Given a 2 KiB limit, when a 3 KiB body is sent (declared or chunked), then 413."""
    api = make_api(ApiSettings(max_request_bytes=2048))
    big = {"items": [{"category": "a", "count": 1, "client_item_id": "x" * 200} for _ in range(15)]}
    assert_problem(api.post("/v1/jobs", json=big, headers=tenant.headers), 413)

    def chunks() -> Iterator[bytes]:
        yield b'{"items": ['
        for _ in range(40):
            yield b'{"category": "a", "count": 1, "sku": "SKU-000000000000000000000000000000000001"},'
        yield b'{"category": "a", "count": 1}]}'

    headers = {**tenant.headers, "content-type": "application/json"}
    assert_problem(api.post("/v1/jobs", content=chunks(), headers=headers), 413)


def test_counts_and_strings_out_of_bounds_are_422_naming_the_field(
    api: TestClient, tenant: Credentials
) -> None:
    """Given a count over the bound and a too-long SKU, when submitting, then each 422 names its field and rule."""
    cases = [
        ({"items": [{"category": "a", "count": 100_001}]}, "items.0.count", "less_than_equal"),
        ({"items": [{"category": "a", "count": 1, "sku": "s" * 129}]}, "items.0.sku", "string_too_long"),
        ({"items": []}, "items", "too_short"),
        ({"items": [{"category": "a", "count": 1}], "seed": -1}, "seed", "greater_than_equal"),
        ({"items": [{"category": "a", "count": 1}], "colour": "red"}, "colour", "extra_forbidden"),
    ]
    for body, field, rule in cases:
        errors = assert_problem(api.post("/v1/jobs", json=body, headers=tenant.headers), 422)["errors"]
        assert {"field": field, "rule": rule} in [{"field": e["field"], "rule": e["rule"]} for e in errors], (
            errors
        )


def test_operator_bounds_tighter_than_the_schema_are_422(
    make_api: Callable[..., TestClient], model_version: object, tenant: Credentials
) -> None:
    """Given at most 10 images per job, when 11 are asked for, then 422 naming items and the rule."""
    api = make_api(ApiSettings(max_images_per_job=10))
    body = {"items": [{"category": "a", "count": 6}, {"category": "b", "count": 5}]}
    errors = assert_problem(api.post("/v1/jobs", json=body, headers=tenant.headers), 422)["errors"]
    assert errors[0]["field"] == "items" and errors[0]["rule"] == "max_images_per_job"


def test_the_rate_limit_answers_429_with_retry_after(
    api: TestClient, make_tenant: Callable[..., Credentials]
) -> None:
    """Given a tenant allowed 3 requests a minute, when it sends 4, then the 4th is 429 with Retry-After."""
    limited = make_tenant(requests_per_minute=3)
    other = make_tenant()
    # One fixed instant, so no minute boundary falls between the requests and resets the window
    api.app.state.services.rate_limiter = MemoryRateLimiter(clock=lambda: 1_000_020.0)  # type: ignore[attr-defined]
    for _ in range(3):
        assert api.get("/v1/jobs", headers=limited.headers).status_code == 200
    response = api.get("/v1/jobs", headers=limited.headers)
    assert_problem(response, 429)
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert api.get("/v1/jobs", headers=other.headers).status_code == 200  # limits are per tenant


def test_the_concurrent_jobs_quota_answers_429(
    api: TestClient, make_tenant: Callable[..., Credentials]
) -> None:
    """Given a quota of one unfinished job, when a second is submitted, then 429 with Retry-After."""
    tenant = make_tenant(max_concurrent_jobs=1)
    assert api.post("/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201
    response = api.post("/v1/jobs", json=JOB, headers=tenant.headers)
    body = assert_problem(response, 429)
    assert "concurrent" in body["detail"] and int(response.headers["retry-after"]) >= 1


def test_the_images_per_day_quota_answers_429(
    api: TestClient, make_tenant: Callable[..., Credentials]
) -> None:
    """Given 10 images a day, when 8 then 5 are asked for, then the second job is 429 until the first ages out."""
    tenant = make_tenant(images_per_day=10)
    first = {"items": [{"category": "a", "count": 8}]}
    assert api.post("/v1/jobs", json=first, headers=tenant.headers).status_code == 201
    response = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 5}]}, headers=tenant.headers)
    body = assert_problem(response, 429)
    assert "per day" in body["detail"]
    assert 23 * 3600 < int(response.headers["retry-after"]) <= 24 * 3600 + 1


def test_an_unsupported_content_type_is_415(api: TestClient, tenant: Credentials) -> None:
    """Given a text/plain body, when submitting, then 415."""
    headers = {**tenant.headers, "content-type": "text/plain"}
    assert_problem(api.post("/v1/jobs", content=b"hello", headers=headers), 415)


def test_the_redis_rate_limiter_is_shared_between_replicas(redis_url: str) -> None:
    """Given two API replicas counting in one Redis, when a tenant sends 3 requests through each with a limit
    of 5, then the 6th request overall is refused with a Retry-After inside the window."""
    import redis

    from scheduler.api.limits import RedisRateLimiter
    from scheduler.errors import RateLimitedError

    clock = [1_000_040.0]  # 20 s into the 60 s window that starts at 1_000_020
    replicas = [RedisRateLimiter(redis.Redis.from_url(redis_url), clock=lambda: clock[0]) for _ in range(2)]
    for i in range(5):
        replicas[i % 2].hit("tenant-1", limit=5, window_seconds=60)
    try:
        replicas[1].hit("tenant-1", limit=5, window_seconds=60)
    except RateLimitedError as exc:
        assert exc.retry_after_seconds == 40
    else:
        raise AssertionError("the 6th request was allowed")
    replicas[0].hit("tenant-2", limit=5, window_seconds=60)  # another tenant is unaffected
    clock[0] += 40  # the next window
    replicas[0].hit("tenant-1", limit=5, window_seconds=60)


def test_a_chunked_body_over_the_limit_is_413_on_every_json_endpoint(
    pg_factory: sessionmaker[Session],
    model_version: object,
    tenant: Credentials,
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given a 2 KiB limit and the API on uvicorn, when a chunked body (no Content-Length) of about 3 KiB is
    sent to POST /v1/jobs, /v1/jobs:estimate and /v1/previews, then each answers 413 problem JSON, not 400."""
    settings = ApiSettings(max_request_bytes=2048)
    app = _app(pg_factory, MemoryStore(), [], tmp_path, settings, WebhookSettings())
    url = live_server_factory(app).url

    def chunks() -> Iterator[bytes]:
        yield b'{"category": "a", "items": ['
        for _ in range(40):
            yield b'{"category": "a", "count": 1, "sku": "SKU-000000000000000000000000000000000001"},'
        yield b'{"category": "a", "count": 1}]}'

    headers = {**tenant.headers, "content-type": "application/json"}
    with httpx.Client(base_url=url, timeout=30) as http:
        for path in ("/v1/jobs", "/v1/jobs:estimate", "/v1/previews"):
            response = http.post(path, content=chunks(), headers=headers)
            assert response.request.headers.get("transfer-encoding") == "chunked"
            assert response.status_code == 413, (path, response.status_code, response.text[:200])
            body = assert_problem(response, 413)
            assert "2048" in body["detail"]
