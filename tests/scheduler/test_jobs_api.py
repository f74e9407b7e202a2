"""`/v1/jobs` through FastAPI's TestClient on real PostgreSQL: submit, list, show, cancel, retry, estimate."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import quarantine_chunk
from db.engine import transaction
from db.status import ChunkStatus, JobStatus
from db.tables import Chunk, Job
from scheduler.api.cursors import encode_cursor
from tests.scheduler.conftest import Credentials

ITEMS = [{"category": "a", "count": 5, "sku": "SKU-1"}, {"category": "b", "count": 3}]


def submit(api: TestClient, tenant: Credentials, body: dict | None = None, **headers: str) -> dict:
    response = api.post(
        "/v1/jobs", json=body or {"items": ITEMS, "seed": 7}, headers={**tenant.headers, **headers}
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_a_submitted_job_is_planned_published_and_shown(
    api: TestClient, tenant: Credentials, published: list
) -> None:
    """Given inline items, when a client submits them, then the job is queued with its chunks published."""
    response = api.post("/v1/jobs", json={"items": ITEMS, "seed": 7, "chunk_size": 2}, headers=tenant.headers)

    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["model"] == {"name": "tiny", "version": 1}
    assert job["counts"]["images_total"] == 8
    assert job["counts"]["chunks_total"] == 5  # ceil(5/2) + ceil(3/2)
    assert published == [("bulk", published[0][1])] and len(published[0][1]) == 5
    shown = api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json()
    assert shown["id"] == job["id"] and shown["seed"] == 7 and shown["eta_seconds"] is None


def test_a_job_without_seed_gets_one_recorded(api: TestClient, tenant: Credentials) -> None:
    """Given no seed, when submitting, then the job shows the seed chosen for it."""
    job = submit(api, tenant, {"items": ITEMS})
    assert isinstance(job["seed"], int) and job["seed"] >= 0


def test_jobs_are_listed_newest_first_with_cursor_pages_and_a_status_filter(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given five jobs, when listing two per page, then every job appears once, newest first."""
    ids = [submit(api, tenant)["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", params=params, headers=tenant.headers).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    with transaction(pg_factory) as session:
        session.execute(update(Job).where(Job.id == ids[0]).values(status=JobStatus.FAILED))
    failed = api.get("/v1/jobs", params={"status": "failed"}, headers=tenant.headers).json()["data"]
    assert [job["id"] for job in failed] == [ids[0]]


def test_a_forged_cursor_is_a_422_naming_the_cursor(api: TestClient, tenant: Credentials) -> None:
    """Given a cursor the API did not issue, when listing, then the 422 names `cursor`."""
    response = api.get("/v1/jobs", params={"cursor": "not-a-cursor!"}, headers=tenant.headers)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "cursor"


def test_a_cursor_carrying_an_integer_beyond_64_bits_is_a_422_not_a_500(
    api: TestClient, tenant: Credentials
) -> None:
    """Given a hand-made image-page cursor after index 10**20 (beyond PostgreSQL's bigint and SQLite's integer:
    a DataError / OverflowError, so a 500), when listing a job's images, then the 422 names `cursor`; the
    largest 64-bit index is a cursor like any other (an empty page)."""
    job = submit(api, tenant)
    url = f"/v1/jobs/{job['id']}/images"
    response = api.get(url, params={"cursor": encode_cursor(10**20)}, headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "cursor"
    edge = api.get(url, params={"cursor": encode_cursor(2**63 - 1)}, headers=tenant.headers)
    assert edge.status_code == 200, edge.text
    assert edge.json()["data"] == []


def test_cancel_moves_the_job_to_cancelling_and_is_repeatable(api: TestClient, tenant: Credentials) -> None:
    """Given a queued job, when it is cancelled twice, then it is cancelling with the flag set both times."""
    job = submit(api, tenant)
    for _ in range(2):
        response = api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
        assert response.status_code == 202
        assert response.json()["status"] == "cancelling"
        assert response.json()["cancel_requested"] is True


def test_retry_requeues_only_the_quarantined_chunks(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], published: list
) -> None:
    """Given a failed job with one quarantined chunk, when retried, then only that chunk is pending and published."""
    job = submit(api, tenant, {"items": [{"category": "a", "count": 4}], "chunk_size": 2, "seed": 1})
    with transaction(pg_factory) as session:
        chunk_ids = session.scalars(
            select(Chunk.id).where(Chunk.job_id == job["id"]).order_by(Chunk.id)
        ).all()
        quarantine_chunk(session, chunk_ids[0], error="boom")
        session.execute(update(Chunk).where(Chunk.id == chunk_ids[1]).values(status=ChunkStatus.SUCCEEDED))
        session.execute(update(Job).where(Job.id == job["id"]).values(status=JobStatus.FAILED))
    published.clear()

    response = api.post(f"/v1/jobs/{job['id']}/retry", headers=tenant.headers)

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["counts"]["images_failed"] == 0 and body["counts"]["chunks_finished"] == 0
    assert published == [("bulk", (chunk_ids[0],))]
    with pg_factory() as session:
        assert session.get(Chunk, chunk_ids[0]).status is ChunkStatus.PENDING  # type: ignore[union-attr]
    again = api.post(f"/v1/jobs/{job['id']}/retry", headers=tenant.headers)
    assert again.status_code == 409


def test_estimate_counts_images_and_chunks_without_creating_a_job(
    api: TestClient, tenant: Credentials, published: list
) -> None:
    """Given items, when estimating, then images/chunks/seconds come back and nothing is created."""
    response = api.post(
        "/v1/jobs:estimate",
        json={"items": [{"category": "a", "count": 1000}], "chunk_size": 256},
        headers=tenant.headers,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["images"] == 1000 and body["chunks"] == 4
    assert body["throughput_basis"] == "default" and body["seconds"] > 0
    assert api.get("/v1/jobs", headers=tenant.headers).json()["data"] == []
    assert published == []


def test_a_csv_manifest_upload_becomes_the_jobs_items(api: TestClient, tenant: Credentials) -> None:
    """Given a CSV of SKUs (with an extra column), when uploaded as multipart, then each row is an item."""
    csv_bytes = b"sku,category,count,title\nSKU-1,a,2,Red shoe\nSKU-2,b,1,Blue dress\n"
    response = api.post(
        "/v1/jobs",
        files={"file": ("missing.csv", csv_bytes, "text/csv")},
        data={"spec": json.dumps({"seed": 3})},
        headers=tenant.headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["counts"]["images_total"] == 3


def test_jsonl_and_parquet_manifests_are_accepted(api: TestClient, tenant: Credentials) -> None:
    """Given the same SKUs as JSONL and as Parquet, when uploaded, then both make the same number of images."""
    jsonl = b'{"sku": "S1", "category": "a", "count": 2}\n{"sku": "S2", "category": "c"}\n'
    buffer = io.BytesIO()
    pq.write_table(pa.table({"sku": ["S1", "S2"], "category": ["a", "c"], "count": [2, 1]}), buffer)
    for name, data in (("m.jsonl", jsonl), ("m.parquet", buffer.getvalue())):
        response = api.post("/v1/jobs", files={"file": (name, data)}, headers=tenant.headers)
        assert response.status_code == 201, response.text
        assert response.json()["counts"]["images_total"] == 3


def test_a_bad_manifest_row_is_a_422_naming_row_and_column(api: TestClient, tenant: Credentials) -> None:
    """Given a CSV whose second row has count 0, when uploaded, then the 422 names that row's count."""
    csv_bytes = b"sku,category,count\nS1,a,1\nS2,a,0\n"
    response = api.post("/v1/jobs", files={"file": ("m.csv", csv_bytes)}, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "file.row[2].count"


def test_an_unknown_category_is_a_422_naming_the_item(api: TestClient, tenant: Credentials) -> None:
    """Given a category the model does not know, when submitting, then the 422 names items[0].category."""
    response = api.post(
        "/v1/jobs", json={"items": [{"category": "zebra", "count": 1}]}, headers=tenant.headers
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "items[0].category"


def test_a_sku_that_would_escape_its_folder_is_refused(api: TestClient, tenant: Credentials) -> None:
    """Given a SKU with '..' segments, when submitting, then it is a 422, never a rewritten key."""
    response = api.post(
        "/v1/jobs", json={"items": [{"category": "a", "count": 1, "sku": "../other"}]}, headers=tenant.headers
    )
    assert response.status_code == 422
    assert "sku" in response.json()["detail"]


def test_models_are_listed(api: TestClient, tenant: Credentials) -> None:
    """Given a registered model, when listing models, then it appears with its categories and status."""
    data = api.get("/v1/models", headers=tenant.headers).json()["data"]
    assert [(m["name"], m["version"], m["status"], m["categories"]) for m in data] == [
        ("tiny", 1, "production", ["a", "b", "c"])
    ]


def test_made_up_http_methods_share_one_metrics_series(api: TestClient) -> None:
    """HTTP allows any method token: 50 requests with 50 made-up methods, sent with no key, add one
    `method="other"` series to the request counter, not 50 (each series costs the API and Prometheus memory)."""
    for number in range(50):
        api.request(f"BREW{number}", "/v1/jobs")
    lines = [
        line
        for line in api.get("/metrics").text.splitlines()
        if line.startswith("catalogan_http_requests_total")
    ]
    assert not any("BREW" in line for line in lines), lines
    assert [line for line in lines if 'method="other"' in line] == [
        'catalogan_http_requests_total{method="other",route="/v1/jobs",status="405"} 50.0'
    ]


def test_health_readiness_and_metrics_answer(api: TestClient, tenant: Credentials) -> None:
    """Given a running app, when probed, then healthz/readyz are ok and metrics carry the pipeline families."""
    submit(api, tenant)
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "object_store": "ok",
    }
    text = api.get("/metrics").text
    for family in (
        "catalogan_queue_depth",
        "catalogan_images_per_second",
        'catalogan_jobs{status="queued"} 1.0',
        "catalogan_images_failed",
        "catalogan_job_latency_seconds",
        "catalogan_http_requests_total",
    ):
        assert family in text
