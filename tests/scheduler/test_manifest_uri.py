"""SKU manifests from hostile tenants: `manifest_uri` only under the tenant's upload prefix (or an operator's
allow-list), a size cap checked before the read, and Parquet/CSV/JSONL bounded before they are decoded.
The API on uvicorn (in this process, so its Python allocations can be traced), PostgreSQL and SeaweedFS S3."""

from __future__ import annotations

import io
import json
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from db.storage import ObjectStore
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app
from tests.services import SeaweedFS

CSV = b"sku,category,count\nS1,a,2\nS2,b,3\n"
MIB = 1024 * 1024


def _api(
    pg_factory: sessionmaker[Session], store: ObjectStore, tmp_path: Path, settings: ApiSettings | None = None
) -> TestClient:
    return TestClient(_app(pg_factory, store, [], tmp_path, settings or ApiSettings(), WebhookSettings()))


def test_a_manifest_in_s3_becomes_the_jobs_items_only_under_the_callers_upload_prefix(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    s3_store: ObjectStore,
    make_tenant: Callable[..., Credentials],
    tmp_path: Path,
) -> None:
    """Given CSV manifests under tenants A's and B's upload prefixes in catalogan's own bucket, when A submits
    each by URI, then A's makes a 5-image job and B's is a 422 naming manifest_uri; a missing object is a 422;
    a file in A's own prefix but outside `uploads/` (its job outputs) is refused too."""
    a, b = make_tenant(), make_tenant()
    for tenant in (a, b):
        s3_store.put(f"{tenant.tenant_id}/uploads/skus.csv", CSV)
    s3_store.put(f"{a.tenant_id}/jobs/x/manifest.csv", CSV)
    api = _api(pg_factory, s3_store, tmp_path)

    own = api.post(
        "/v1/jobs", json={"manifest_uri": s3_store.uri(f"{a.tenant_id}/uploads/skus.csv")}, headers=a.headers
    )
    assert own.status_code == 201, own.text
    assert own.json()["counts"]["images_total"] == 5

    for key in (f"{b.tenant_id}/uploads/skus.csv", f"{a.tenant_id}/jobs/x/manifest.csv"):
        other = api.post("/v1/jobs", json={"manifest_uri": s3_store.uri(key)}, headers=a.headers)
        assert other.status_code == 422, key
        error = other.json()["errors"][0]
        assert (error["field"], error["rule"]) == ("manifest_uri", "tenant_prefix")

    missing = api.post(
        "/v1/jobs", json={"manifest_uri": s3_store.uri(f"{a.tenant_id}/uploads/nope.csv")}, headers=a.headers
    )
    assert missing.status_code == 422 and missing.json()["errors"][0]["rule"] == "readable"
    api.close()


def test_another_bucket_is_refused_unread_unless_the_operator_allows_the_prefix_for_that_tenant(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    s3_store: ObjectStore,
    seaweedfs: SeaweedFS,
    make_tenant: Callable[..., Credentials],
    tmp_path: Path,
) -> None:
    """Given a bucket catalogan's credentials can read, with exports/skus.csv and private/secret.csv,
    when tenant A submits either by URI without an allow-list, then both are 422 (tenant_prefix) and no job
    is made; with `exports/` allowed for A only, A's exports URI makes a job, private/ is still refused, and
    tenant B is refused the same exports URI."""
    bucket = f"other-{uuid.uuid4().hex[:8]}"
    client = seaweedfs.client()
    client.create_bucket(Bucket=bucket)
    for key in ("exports/skus.csv", "private/secret.csv"):
        client.put_object(Bucket=bucket, Key=key, Body=CSV)
    a, b = make_tenant(), make_tenant()
    exports, private = f"s3://{bucket}/exports/skus.csv", f"s3://{bucket}/private/secret.csv"

    closed = _api(pg_factory, s3_store, tmp_path)
    for uri in (exports, private):
        response = closed.post("/v1/jobs", json={"manifest_uri": uri}, headers=a.headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["rule"] == "tenant_prefix"
    assert closed.get("/v1/jobs", headers=a.headers).json()["data"] == []
    closed.close()

    allowed = ApiSettings(manifest_uri_allowed_prefixes={a.tenant_id: [f"s3://{bucket}/exports/"]})
    opened = _api(pg_factory, s3_store, tmp_path, allowed)
    assert opened.post("/v1/jobs", json={"manifest_uri": exports}, headers=a.headers).status_code == 201
    assert opened.post("/v1/jobs", json={"manifest_uri": private}, headers=a.headers).status_code == 422
    assert opened.post("/v1/jobs", json={"manifest_uri": exports}, headers=b.headers).status_code == 422
    opened.close()


def test_a_manifest_over_the_size_cap_is_refused_before_it_is_read(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    s3_store: ObjectStore,
    make_tenant: Callable[..., Credentials],
    tmp_path: Path,
) -> None:
    """Given a 4 KiB cap on manifest objects and a 5 KiB CSV under A's upload prefix,
    when A submits it by URI, then 422 with rule max_bytes naming the object's size."""
    a = make_tenant()
    big = CSV + b"".join(b"S%d,a,1\n" % i for i in range(800))
    assert len(big) > 5 * 1024
    s3_store.put(f"{a.tenant_id}/uploads/big.csv", big)
    api = _api(pg_factory, s3_store, tmp_path, ApiSettings(manifest_max_bytes=4096))
    response = api.post(
        "/v1/jobs", json={"manifest_uri": s3_store.uri(f"{a.tenant_id}/uploads/big.csv")}, headers=a.headers
    )
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("manifest_uri", "max_bytes") and str(len(big)) in error[
        "message"
    ]
    api.close()


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _upload(url: str, headers: dict[str, str], name: str, data: bytes) -> tuple[httpx.Response, float]:
    """Submit `data` as a multipart manifest; return the answer and the peak of Python allocations (MiB)."""
    tracemalloc.start()
    try:
        with httpx.Client(base_url=url, timeout=300) as http:
            response = http.post("/v1/jobs", files={"file": (name, data)}, headers=headers)
        return response, tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_a_tiny_parquet_of_a_million_rows_is_refused_from_its_footer_without_decoding(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    s3_store: ObjectStore,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given a Parquet file of 1,000,000 rows that is a few KB on disk and the default 100,000-row limit,
    when it is uploaded, then 422 (max_items) naming the million rows, and the API allocated under 16 MiB of
    Python objects doing so (decoding every row first took hundreds of MiB)."""
    a = make_tenant()
    rows = 1_000_000
    indices = pa.array([0] * rows, type=pa.int32())
    table = pa.table({"category": pa.DictionaryArray.from_arrays(indices, pa.array(["a"]))})
    data = _parquet(table)
    assert len(data) < 64 * 1024
    url = live_server_factory(_app(pg_factory, s3_store, [], tmp_path, ApiSettings(), WebhookSettings())).url

    response, peak_mib = _upload(url, a.headers, "skus.parquet", data)

    assert peak_mib < 16, f"{peak_mib:.0f} MiB of Python objects for a refused file"
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["rule"] == "max_items" and "1000000" in error["message"]


def test_a_parquet_of_huge_dictionary_encoded_cells_is_refused_before_they_become_strings(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    s3_store: ObjectStore,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given 2,000 rows whose `sku` is one dictionary-encoded 64 KiB string (a small file decoding to 125 MiB),
    when it is uploaded, then 422 with rule max_cell_bytes naming the sku column, and the API allocated under
    16 MiB of Python objects (not one string per row)."""
    a = make_tenant()
    rows = 2_000
    sku = pa.DictionaryArray.from_arrays(pa.array([0] * rows, type=pa.int32()), pa.array(["S" * 65536]))
    table = pa.table({"category": pa.array(["a"] * rows), "sku": sku})
    data = _parquet(table)
    assert len(data) < 64 * 1024
    url = live_server_factory(_app(pg_factory, s3_store, [], tmp_path, ApiSettings(), WebhookSettings())).url

    response, peak_mib = _upload(url, a.headers, "skus.parquet", data)

    assert peak_mib < 16, f"{peak_mib:.0f} MiB of Python objects for a refused file"
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("file.row[1].sku", "max_cell_bytes")


def test_a_parquet_is_refused_once_its_decoded_cells_pass_the_byte_cap() -> None:
    """Given 3,000 rows of 200-byte SKUs (600 KB of cell text) and a 100 KB cap on decoded bytes,
    when parsed, then 422 with rule max_decoded_bytes, raised at the first batch over the cap."""
    from scheduler.api.item_manifests import parse_item_manifest
    from scheduler.errors import RequestValidationError

    rows = 3_000
    table = pa.table({"category": ["a"] * rows, "sku": [f"{i:0200d}" for i in range(rows)]})
    with pytest.raises(RequestValidationError) as caught:
        parse_item_manifest(_parquet(table), "parquet", max_decoded_bytes=100_000)
    assert caught.value.rule == "max_decoded_bytes"


def test_a_csv_cell_over_the_csv_limit_and_a_deeply_nested_jsonl_line_are_422s_naming_the_row(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    s3_store: ObjectStore,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given a CSV whose second row has a 200,000-character cell, a JSONL whose first line nests 30,000 lists
    and a JSONL line of 100 KB, when each is uploaded, then each is a 422 problem naming the row or line and
    the rule (csv, json_depth, max_line_bytes), never a 500."""
    a = make_tenant()
    url = live_server_factory(_app(pg_factory, s3_store, [], tmp_path, ApiSettings(), WebhookSettings())).url
    cases = {
        "long.csv": (b"sku,category\nS1,a\nS2," + b"b" * 200_000 + b"\n", "file.row[2]", "csv"),
        "deep.jsonl": (b"[" * 30_000 + b"]" * 30_000 + b"\n", "file.line[1]", "json_depth"),
        "wide.jsonl": (
            json.dumps({"category": "a", "sku": "x" * 100_000}).encode() + b"\n",
            "file.line[1]",
            "max_line_bytes",
        ),
    }
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, (data, field, rule) in cases.items():
            response = http.post("/v1/jobs", files={"file": (name, data)}, headers=a.headers)
            assert response.status_code == 422, (name, response.status_code, response.text[:300])
            assert response.headers["content-type"].startswith("application/problem+json")
            error = response.json()["errors"][0]
            assert (error["field"], error["rule"]) == (field, rule), name


@pytest.mark.parametrize("uri", ["s3://[/0.csv", "s3://a]/b.csv", "s3://[::1/x.csv"])
def test_a_manifest_uri_that_is_not_a_url_is_a_422_not_a_500(uri: str) -> None:
    """Given a manifest_uri whose host part urllib cannot split (schemathesis found "s3://[/0.csv" gave a 500),
    when it is checked, then it is refused as a 422 on manifest_uri, before anything is read."""
    from scheduler.api.item_manifests import check_manifest_uri
    from scheduler.errors import RequestValidationError

    with pytest.raises(RequestValidationError) as refused:
        check_manifest_uri(uri, tenant_id="t1", store_url="s3://catalogan/objects")
    assert refused.value.field == "manifest_uri" and "not a URL" in str(refused.value)
