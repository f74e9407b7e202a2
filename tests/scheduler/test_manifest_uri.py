"""`manifest_uri`: a SKU manifest read from S3 (SeaweedFS) — and never from another tenant's prefix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from db.storage import ObjectStore
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, _app

CSV = b"sku,category,count\nS1,a,2\nS2,b,3\n"


def test_a_manifest_in_s3_becomes_the_jobs_items_only_under_the_callers_prefix(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    s3_store: ObjectStore,
    make_tenant: Callable[..., Credentials],
    tmp_path: Path,
) -> None:
    """Given CSV manifests under tenants A's and B's prefixes in catalogan's own bucket, when A submits
    each by URI, then A's makes a 5-image job and B's is a 422 naming manifest_uri; a missing object is a 422."""
    a, b = make_tenant(), make_tenant()
    for tenant in (a, b):
        s3_store.put(f"{tenant.tenant_id}/uploads/skus.csv", CSV)
    api = TestClient(_app(pg_factory, s3_store, [], tmp_path, ApiSettings(), WebhookSettings()))

    own = api.post(
        "/v1/jobs", json={"manifest_uri": s3_store.uri(f"{a.tenant_id}/uploads/skus.csv")}, headers=a.headers
    )
    assert own.status_code == 201, own.text
    assert own.json()["counts"]["images_total"] == 5

    other = api.post(
        "/v1/jobs", json={"manifest_uri": s3_store.uri(f"{b.tenant_id}/uploads/skus.csv")}, headers=a.headers
    )
    assert other.status_code == 422
    assert other.json()["errors"][0] == {
        "field": "manifest_uri",
        "rule": "tenant_prefix",
        "message": other.json()["errors"][0]["message"],
    }

    missing = api.post(
        "/v1/jobs", json={"manifest_uri": s3_store.uri(f"{a.tenant_id}/nope.csv")}, headers=a.headers
    )
    assert missing.status_code == 422 and missing.json()["errors"][0]["rule"] == "readable"
    api.close()
