"""Issue 12's smaller findings, each against the real API (uvicorn or TestClient) on PostgreSQL: a job larger
than the whole daily quota is a 422 (waiting cannot help), and a retry whose broker is down is committed and
answered, not a 500."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import quarantine_chunk
from db.engine import transaction
from db.settings import BrokerSettings, DataSettings, StorageSettings
from db.status import ChunkStatus, ModelVersionStatus
from db.storage import MemoryStore
from db.tables import Chunk, ModelVersion
from scheduler.api.app import build_services, create_app
from scheduler.api.limits import MemoryRateLimiter
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials
from tests.services import free_port


def test_a_job_larger_than_the_whole_daily_quota_is_a_422_naming_the_quota(
    api: TestClient, make_tenant: Callable[..., Credentials]
) -> None:
    """Given a quota of 10 images a day and nothing used, when a job of 11 images is submitted, then 422 naming
    items and the rule images_per_day, without a Retry-After (no wait makes it fit); a job of 10 is a 201."""
    tenant = make_tenant(images_per_day=10)
    response = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 11}]}, headers=tenant.headers)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("items", "images_per_day") and "10" in error["message"]
    assert "retry-after" not in response.headers
    assert (
        api.post(
            "/v1/jobs", json={"items": [{"category": "a", "count": 10}]}, headers=tenant.headers
        ).status_code
        == 201
    )


def test_a_retry_while_the_broker_is_down_is_committed_and_answered(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    tmp_path: Path,
) -> None:
    """Given the API whose Redis broker does not answer (a loopback port where nothing listens) and a job whose
    chunks were quarantined, when the tenant retries it, then 202 with the job queued again and its chunks
    pending in SQL, for the reaper to publish once the broker is back (not a 500)."""
    settings = ApiSettings()
    services = build_services(
        settings,
        webhooks=WebhookSettings(),
        broker=BrokerSettings(broker_url=f"redis://127.0.0.1:{free_port()}/0"),
        data=DataSettings(data_dir=tmp_path / "data"),
        storage=StorageSettings(storage_url="memory://"),
        session_factory=pg_factory,
        store=MemoryStore(),
        rate_limiter=MemoryRateLimiter(),
    )
    tenant = make_tenant()
    with TestClient(create_app(settings, services=services), raise_server_exceptions=False) as api:
        created = api.post(
            "/v1/jobs", json={"items": [{"category": "a", "count": 2}]}, headers=tenant.headers
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        with transaction(pg_factory) as session:
            for chunk_id in session.scalars(select(Chunk.id).where(Chunk.job_id == job_id)).all():
                quarantine_chunk(session, chunk_id, error="boom")
        response = api.post(f"/v1/jobs/{job_id}/retry", headers=tenant.headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    with pg_factory() as session:
        statuses = set(session.scalars(select(Chunk.status).where(Chunk.job_id == job_id)).all())
    assert statuses == {ChunkStatus.PENDING}


def test_an_unknown_multipart_part_is_a_400_and_makes_no_job(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given a multipart submit with the manifest and an extra text part `colour` (not `file` or `spec`), when
    sent, then 400 problem JSON naming the part, and no job exists."""
    response = api.post(
        "/v1/jobs",
        files={"file": ("skus.csv", b"sku,category,count\nS1,a,1\n")},
        data={"colour": "red"},
        headers=tenant.headers,
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "colour" in response.json()["detail"]
    with pg_factory() as session:
        assert session.scalars(select(Chunk.id)).first() is None


def test_a_json_body_that_is_not_utf8_is_a_422_naming_the_body(api: TestClient, tenant: Credentials) -> None:
    """Given bytes that are not UTF-8 sent as application/json (schemathesis found this shape), when posted to
    /v1/previews and /v1/jobs:estimate, then each is a 422 problem naming `body`, not an undocumented 400."""
    headers = {**tenant.headers, "content-type": "application/json"}
    for path in ("/v1/previews", "/v1/jobs:estimate"):
        response = api.post(path, content=b".V\xe9\x1fs\xff\xfe", headers=headers)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["errors"][0]["field"] == "body"


def test_a_candidate_version_runs_only_when_named_with_its_version(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given tiny@1 in production and tiny@2 a candidate (trained, not promoted), when a job names `tiny@2`,
    then it runs on version 2 (the documented choice: pinning a candidate lets a team try it before
    promotion); `tiny` alone still means the production version 1."""
    from tests.pipeline import make_model_version

    candidate = make_model_version(pg_factory, version=2)
    with transaction(pg_factory) as session:
        session.get_one(ModelVersion, candidate.id).status = ModelVersionStatus.CANDIDATE
    pinned = api.post(
        "/v1/jobs", json={"model": "tiny@2", "items": [{"category": "a", "count": 1}]}, headers=tenant.headers
    )
    assert pinned.status_code == 201, pinned.text
    assert pinned.json()["model"] == {"name": "tiny", "version": 2}
    bare = api.post(
        "/v1/jobs", json={"model": "tiny", "items": [{"category": "a", "count": 1}]}, headers=tenant.headers
    )
    assert bare.status_code == 201 and bare.json()["model"] == {"name": "tiny", "version": 1}


def test_the_models_listing_shows_a_documented_metrics_summary_only(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given tiny@1 whose stored metrics carry the summary, per-category tables, the evaluator's digest and
    the memorization index's storage URI, when a tenant lists models, then `metrics` holds only the summary
    fields of the document (unmeasured ones null), and nothing of the rest: no storage URI, no tables."""
    stored = {
        "fid_fm": 0.81,
        "precision": 0.88,
        "recall": 0.62,
        "conditional_accuracy": 0.93,
        "cas": 0.81,
        "samples_per_class": 1000,
        "evaluator_sha256": "d0fb0c33",
        "per_class_accuracy": {"a": 0.9, "b": 0.95},
        "memorization_index": {"uri": "s3://private-bucket/models/tiny/1/index.npz", "threshold": 0.2},
        "closest_pairs_png": "s3://private-bucket/models/tiny/1/closest.png",
    }
    with transaction(pg_factory) as session:
        session.execute(update(ModelVersion).values(metrics=stored))
    response = api.get("/v1/models", headers=tenant.headers)
    assert response.status_code == 200, response.text
    (model,) = response.json()["data"]
    assert model["metrics"] == {
        "fid_fm": 0.81,
        "kid": None,
        "precision": 0.88,
        "recall": 0.62,
        "conditional_accuracy": 0.93,
        "cas": 0.81,
        "intra_class_ssim": None,
        "near_copy_rate": None,
        "samples_per_class": 1000,
    }
    assert "private-bucket" not in response.text
    documented = api.get("/openapi.json").json()["components"]["schemas"]["ModelMetricsSummary"]
    assert set(documented["properties"]) == set(model["metrics"])


def test_a_sku_named_like_the_jobs_own_files_is_refused(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Given SKUs `manifest.jsonl`, `manifest.parquet` and `shards` (their folder would be where the job's
    manifest or shards go: on a local store the manifest could then never be written), when submitted inline
    or in an uploaded CSV, then each is a 422 naming sku and the reservation, and no job is made."""
    for sku in ("manifest.jsonl", "manifest.parquet", "shards"):
        inline = api.post(
            "/v1/jobs", json={"items": [{"category": "a", "count": 1, "sku": sku}]}, headers=tenant.headers
        )
        assert inline.status_code == 422, inline.text
        assert "sku" in inline.text and "reserved" in inline.text
        uploaded = api.post(
            "/v1/jobs",
            files={"file": ("skus.csv", f"sku,category,count\n{sku},a,1\n".encode())},
            headers=tenant.headers,
        )
        assert uploaded.status_code == 422, uploaded.text
        assert "reserved" in uploaded.text
    with pg_factory() as session:
        assert session.scalars(select(Chunk.id)).first() is None


def test_estimate_and_preview_bodies_are_parsed_only_after_the_key_and_the_rate_limit_and_off_the_loop(
    api: TestClient, make_tenant: Callable[..., Credentials], monkeypatch: Any
) -> None:
    """FastAPI parses a declared body on the event loop before any dependency runs: a caller without a key
    could make every request wait on the parse of a 10 MiB body. These two routes read their body themselves,
    after authentication and the rate limit, on a worker thread."""
    import asyncio

    from scheduler.api.schemas import JobCreate, PreviewCreate

    parses: list[tuple[str, bool]] = []

    def recording(model: Any) -> Any:
        original = model.model_validate_json

        def parse(data: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            parses.append((model.__name__, on_loop))
            return original(data, *args, **kwargs)

        return parse

    monkeypatch.setattr(JobCreate, "model_validate_json", recording(JobCreate))
    monkeypatch.setattr(PreviewCreate, "model_validate_json", recording(PreviewCreate))
    # ~9 MiB of JSON for the estimate, under the 10 MiB body limit; ~15 KiB for a preview (its bound: 16 KiB)
    bodies = {
        "/v1/jobs:estimate": b"[" + b"[]," * (3 * 2**20) + b"[]]",
        "/v1/previews": b"[" + b"[]," * 5000 + b"[]]",
    }
    limited = make_tenant(requests_per_minute=1)
    assert api.get("/v1/jobs", headers=limited.headers).status_code == 200  # its one request this minute
    for path, big in bodies.items():
        # Given a body that would take a CPU a while to parse, when sent without a valid key or over the limit
        no_key = api.post(
            path, content=big, headers={"Authorization": "Bearer cg_nope", "Content-Type": "application/json"}
        )
        over = api.post(path, content=big, headers={**limited.headers, "Content-Type": "application/json"})
        # Then the answers are 401 and 429, and the body was never parsed
        assert (no_key.status_code, over.status_code) == (401, 429), (path, no_key.text, over.text)
    assert parses == []
    # And with a valid key the body is parsed, on a worker thread, and a bad field is still a 422 naming it
    tenant = make_tenant()
    estimate = api.post(
        "/v1/jobs:estimate", json={"items": [{"category": "a", "count": 0}]}, headers=tenant.headers
    )
    assert estimate.status_code == 422 and estimate.json()["errors"][0]["field"].endswith("items.0.count")
    preview = api.post("/v1/previews", json={"category": "a", "count": 9}, headers=tenant.headers)
    assert preview.status_code == 422 and preview.json()["errors"][0]["field"].endswith("count")
    assert (
        api.post(
            "/v1/jobs:estimate", content=b"x", headers={**tenant.headers, "Content-Type": "text/csv"}
        ).status_code
        == 415
    )
    assert parses == [("JobCreate", False), ("PreviewCreate", False)]
    ok = api.post(
        "/v1/jobs:estimate", json={"items": [{"category": "a", "count": 3}]}, headers=tenant.headers
    )
    assert ok.status_code == 200 and ok.json()["images"] == 3


def test_console_forms_and_previews_have_a_tighter_body_bound_than_submits(
    api: TestClient, tenant: Credentials
) -> None:
    """Forms are parsed before the console's routes check who sent them, and a preview is a few fields: their
    bodies are bounded well below CATALOGAN_MAX_REQUEST_BYTES, which a submit's inline items need."""
    form = {"api_key": "cg_nope", "csrf_token": "x", "next": "/console/jobs", "pad": "a" * 300_000}
    sign_in = api.post("/console/sign-in", data=form)
    assert sign_in.status_code == 413 and "262144" in sign_in.text
    preview = api.post("/v1/previews", json={"category": "a", "pad": "a" * 20_000}, headers=tenant.headers)
    assert preview.status_code == 413
    # And a submit of the same size is read (here: a 422 naming the unknown field, not a 413)
    submit = api.post(
        "/v1/jobs",
        json={"items": [{"category": "a", "count": 1}], "pad": "a" * 300_000},
        headers=tenant.headers,
    )
    assert submit.status_code == 422, submit.text


def test_a_nul_character_anywhere_is_a_422_or_404_naming_it_and_creates_nothing(
    api: TestClient, tenant: Credentials
) -> None:
    """PostgreSQL text cannot hold NUL: each place a client can put one answers 422 naming the field (or 404
    for a path), never a 500, and no job is created."""
    import base64
    import json

    one = {"category": "a", "count": 1}
    submits = {
        "items.0.client_item_id": {"items": [{**one, "client_item_id": "a\x00b"}]},
        "webhook_url": {"items": [one], "webhook_url": "http://127.0.0.1/a\x00b"},
        "model": {"model": "tiny\x00", "items": [one]},
        "variation.source.job_id": {
            "model": "tiny@1",
            "variation": {"source": {"job_id": "x\x00", "index": 0}, "strength": 0.3, "count": 2},
        },
    }
    for field, body in submits.items():
        response = api.post("/v1/jobs", json=body, headers=tenant.headers)
        assert response.status_code == 422, (field, response.text)
        assert any(error["field"].endswith(field) for error in response.json()["errors"]), (
            field,
            response.text,
        )
    manifest = api.post(
        "/v1/jobs",
        files={"file": ("m.csv", b"category,client_item_id\na,x\x00y\n", "text/csv")},
        headers=tenant.headers,
    )
    assert manifest.status_code == 422 and "client_item_id" in manifest.text, manifest.text
    estimate = api.post(
        "/v1/jobs:estimate", json={"model": "tiny\x00", "items": [one]}, headers=tenant.headers
    )
    assert estimate.status_code == 422
    preview = api.post("/v1/previews", json={"model": "tiny\x00", "category": "a"}, headers=tenant.headers)
    assert preview.status_code == 422
    cursor = base64.urlsafe_b64encode(json.dumps(["2024-01-01T00:00:00+00:00", "a\x00"]).encode()).decode()
    listed = api.get("/v1/jobs", params={"cursor": cursor.rstrip("=")}, headers=tenant.headers)
    assert listed.status_code == 422 and listed.json()["errors"][0]["field"] == "cursor"
    for path in ("/v1/jobs/a%00b", "/v1/jobs/a%00b/images", "/console/jobs/a%00b"):
        assert api.get(path, headers=tenant.headers).status_code == 404, path
    assert api.get("/v1/jobs", headers=tenant.headers).json()["data"] == []
