"""Key injection: hostile SKUs, categories and manifest URIs are refused with a 422, and nothing is ever
written outside the tenant's prefix (checked on the real S3 store, with a real worker running)."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.engine import transaction
from db.settings import BrokerSettings, DataSettings, StorageSettings
from db.tables import Job
from db.tenants import create_api_key
from scheduler.api.app import build_services, create_app
from scheduler.api.limits import MemoryRateLimiter
from scheduler.settings import ApiSettings
from tests.faults.checks import assert_exactly_once
from tests.pipeline import PipelineStack, make_tenant

# Traversal, encoded traversal, absolute paths, NUL and control characters, empty and doubled separators.
HOSTILE = [
    "../escape",
    "..",
    "a/../../escape",
    "%2e%2e/escape",
    "/etc/passwd",
    "//escape",
    "a//b",
    "sku\x00.png",
    "sku\nline",
    "sku\rline",
    "sku\tx",
    "sku\x1b[31m",
    "sku\x7f",
    "C:\\escape",
    "..\\escape",
]
# Percent-encoded names without a real separator are ordinary characters to S3 and to a folder: they are
# accepted, kept literally (never decoded), and stay inside the job's folder.
LITERAL = ["%2e%2e%2fescape", "..%2fescape"]


def _client(stack: PipelineStack, tmp_path: Path) -> tuple[TestClient, dict[str, str]]:
    with transaction(stack.session_factory) as session:
        key = create_api_key(session, stack.tenant_id, name="injection").clear_key
    services = build_services(
        ApiSettings(),
        broker=BrokerSettings(broker_url=stack.redis_url),
        data=DataSettings(data_dir=tmp_path / "api-data"),
        storage=StorageSettings(storage_url=stack.store.url),
        session_factory=stack.session_factory,
        store=stack.store,
        publisher=stack.publisher,
        rate_limiter=MemoryRateLimiter(),
    )
    client = TestClient(create_app(ApiSettings(), services=services), raise_server_exceptions=False)
    return client, {"Authorization": f"Bearer {key}"}


def test_hostile_names_are_422_and_nothing_lands_outside_the_tenant_prefix(
    stack: PipelineStack, tmp_path: Path
) -> None:
    # Given a worker, the API on the real S3 store, and another tenant's manifest in the same store
    stack.start("worker")
    api, headers = _client(stack, tmp_path)
    other = make_tenant(stack.session_factory, "other")
    stack.store.put(f"{other}/uploads/skus.csv", b"sku,category,count\nX-1,a,1\n")
    before = {info.key for info in stack.store.list("")}
    tenant = stack.tenant_id
    # When every hostile string is sent as a SKU and as a category (JSON), as a SKU in an uploaded CSV,
    # and as the key of a manifest URI
    refused = []
    for value in HOSTILE:
        refused.append(
            api.post(
                "/v1/jobs", json={"items": [{"category": "a", "count": 1, "sku": value}]}, headers=headers
            )
        )
        refused.append(
            api.post("/v1/jobs", json={"items": [{"category": value, "count": 1}]}, headers=headers)
        )
        csv = "sku,category,count\n" + json.dumps(value) + ",a,1\n"
        refused.append(
            api.post("/v1/jobs", files={"file": ("skus.csv", csv.encode(), "text/csv")}, headers=headers)
        )
    for key in (
        f"{tenant}/../{other}/uploads/skus.csv",
        f"{tenant}/%2e%2e/{other}/uploads/skus.csv",
        f"/{other}/uploads/skus.csv",
        f"{tenant}/uploads/skus.csv\x00",
    ):
        refused.append(
            api.post("/v1/jobs", json={"manifest_uri": f"{stack.store.url}/{key}"}, headers=headers)
        )
    refused.append(api.post("/v1/jobs", json={"manifest_uri": "file:///etc/passwd"}, headers=headers))
    # Then every one of them is a 422 problem, and no job was created for any
    assert [r.status_code for r in refused] == [422] * len(refused), [
        (i, r.status_code, r.text[:100]) for i, r in enumerate(refused) if r.status_code != 422
    ]
    assert all(r.headers["content-type"].startswith("application/problem+json") for r in refused)
    with stack.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    # And a legitimate job (the percent names as SKUs) runs, writing only under <tenant>/jobs/<job>/
    items = [{"category": "a", "count": 5, "sku": "SKU-1.v2_ok"}]
    items += [{"category": "b", "count": 1, "sku": name} for name in LITERAL]
    response = api.post("/v1/jobs", json={"items": items, "seed": 81}, headers=headers)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    stack.wait_terminal(job_id, timeout=120)
    assert_exactly_once(stack, job_id, 5 + len(LITERAL))
    new_keys = {info.key for info in stack.store.list("")} - before
    assert new_keys and all(key.startswith(f"{tenant}/jobs/{job_id}/") for key in new_keys), sorted(new_keys)
    for name in LITERAL:
        assert any(key.startswith(f"{tenant}/jobs/{job_id}/{name}/") for key in new_keys), name
    api.close()
