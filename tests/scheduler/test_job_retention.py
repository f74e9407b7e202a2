"""Retention and deletion on real PostgreSQL and a real SeaweedFS store: `retention_days` → `expires_at`, the
reaper's retention pass, and `DELETE /v1/jobs/{id}` deleting objects while holding no database connection."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.jobs import mark_job_running, transition_job
from db.pipeline_settings import ReaperSettings
from db.status import JobStatus
from db.storage import ObjectStore
from db.storage.base import ObjectInfo, PresignedUrl
from db.tables import Job, utcnow
from scheduler.cli.root import cli
from scheduler.reaper import delete_expired_jobs
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app
from tests.scheduler.test_job_deletion import ITEMS, objects_of, rows_of


class PoolWatchingStore(ObjectStore):
    """The real S3 store, noting how many pooled connections were checked out at each delete."""

    def __init__(self, inner: ObjectStore, factory: sessionmaker[Session]) -> None:
        self.inner = inner
        self.pool = factory.kw["bind"].pool
        self.checked_out_at_delete: list[int] = []

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self.inner.put(key, data, content_type=content_type)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.checked_out_at_delete.append(self.pool.checkedout())
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def presign(self, key: str, *, expires_in_seconds: int) -> PresignedUrl:
        return self.inner.presign(key, expires_in_seconds=expires_in_seconds)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)


@pytest.fixture
def api_store(s3_store: ObjectStore, pg_factory: sessionmaker[Session]) -> PoolWatchingStore:
    """The API's store: a real S3 (SeaweedFS), watched."""
    return PoolWatchingStore(s3_store, pg_factory)


def submit(api: TestClient, tenant: Credentials, store: ObjectStore, **fields: Any) -> str:
    """A submitted job with an image and a manifest object under its prefix (as a worker writes them)."""
    response = api.post("/v1/jobs", json={"items": ITEMS, "seed": 7, **fields}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["expires_at"] is None  # the clock starts when the job finishes
    prefix = f"{tenant.tenant_id}/jobs/{body['id']}/"
    store.put(prefix + "a/00000000.png", b"png bytes")
    store.put(prefix + "manifest.jsonl", b"{}\n")
    return str(body["id"])


def finish(factory: sessionmaker[Session], job_id: str, at: dt.datetime) -> None:
    """Run the job to succeeded through the guarded transitions, finishing at `at`."""
    with transaction(factory) as session:
        mark_job_running(session, job_id)
        transition_job(session, job_id, JobStatus.SUCCEEDED, now=at)


def test_retention_days_sets_expires_at_at_the_finish_and_the_reaper_deletes_expired_jobs_only(
    api: TestClient, tenant: Credentials, api_store: PoolWatchingStore, pg_factory: sessionmaker[Session]
) -> None:
    """Given a job kept 7 days and one kept by the operator's default (30 days), both finished now, and a
    running job whose expires_at an attacker forged into the past; when the retention pass runs 8 days later
    with room for one object per pass, then the 7-day job's objects go over two passes, then its rows; the
    others keep every object and row; no pooled connection is checked out during any object delete."""
    finished_at = utcnow()
    short = submit(api, tenant, api_store, retention_days=7)
    default = submit(api, tenant, api_store)
    running = submit(api, tenant, api_store, retention_days=1)
    finish(pg_factory, short, finished_at)
    finish(pg_factory, default, finished_at)
    with transaction(pg_factory) as session:
        mark_job_running(session, running)
        session.execute(
            update(Job).where(Job.id == running).values(expires_at=finished_at - dt.timedelta(days=9))
        )

    shown = api.get(f"/v1/jobs/{short}", headers=tenant.headers).json()
    assert shown["retention_days"] == 7
    assert dt.datetime.fromisoformat(shown["expires_at"]) == finished_at + dt.timedelta(days=7)
    shown = api.get(f"/v1/jobs/{default}", headers=tenant.headers).json()
    assert (shown["retention_days"], shown["status"]) == (30, "succeeded")
    listed = {job["id"]: job for job in api.get("/v1/jobs", headers=tenant.headers).json()["data"]}
    assert listed[short]["expires_at"] == shown_expiry(finished_at, 7)

    later = finished_at + dt.timedelta(days=8)
    settings = ReaperSettings(retention_objects_per_pass=1)
    first = delete_expired_jobs(pg_factory, api_store, settings, now=later)
    assert [(r.job_id, r.objects_deleted, r.finished) for r in first] == [(short, 1, False)]
    assert len(objects_of(api_store, tenant, short)) == 1 and rows_of(pg_factory, short) > 1
    second = delete_expired_jobs(pg_factory, api_store, settings, now=later)
    assert [(r.job_id, r.objects_deleted, r.finished) for r in second] == [(short, 1, True)]
    assert objects_of(api_store, tenant, short) == [] and rows_of(pg_factory, short) == 0
    assert delete_expired_jobs(pg_factory, api_store, settings, now=later) == []

    for kept in (default, running):
        assert len(objects_of(api_store, tenant, kept)) == 2 and rows_of(pg_factory, kept) > 1
    assert api_store.checked_out_at_delete == [0, 0]


def shown_expiry(finished_at: dt.datetime, days: int) -> str:
    """`expires_at` as the API writes it."""
    return (finished_at + dt.timedelta(days=days)).isoformat().replace("+00:00", "Z")


def test_delete_removes_objects_and_rows_without_holding_a_connection(
    api: TestClient, tenant: Credentials, api_store: PoolWatchingStore, pg_factory: sessionmaker[Session]
) -> None:
    """Given a finished job with objects in S3, when it is deleted, then 204, its objects and rows are gone,
    and no pooled connection was checked out while the store deleted (before the fix: one, with the job row
    locked, for the whole deletion)."""
    job_id = submit(api, tenant, api_store)
    finish(pg_factory, job_id, utcnow())

    response = api.delete(f"/v1/jobs/{job_id}", headers=tenant.headers)

    assert response.status_code == 204, response.text
    assert objects_of(api_store, tenant, job_id) == [] and rows_of(pg_factory, job_id) == 0
    assert api_store.checked_out_at_delete == [0, 0]


def test_a_deleted_job_cannot_be_retried_meanwhile(
    api: TestClient, tenant: Credentials, api_store: PoolWatchingStore, pg_factory: sessionmaker[Session]
) -> None:
    """Given a completed_with_failures job whose deletion began (expired now) but whose objects are not all
    gone, when it is retried, then 409 and it stays expired and finished (the reaper finishes the deletion)."""
    job_id = submit(api, tenant, api_store)
    with transaction(pg_factory) as session:
        mark_job_running(session, job_id)
        transition_job(session, job_id, JobStatus.COMPLETED_WITH_FAILURES, now=utcnow())
        session.execute(update(Job).where(Job.id == job_id).values(expires_at=utcnow()))

    response = api.post(f"/v1/jobs/{job_id}/retry", headers=tenant.headers)

    assert response.status_code == 409, response.text
    assert api.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()["status"] == "completed_with_failures"


@pytest.mark.parametrize(
    ("value", "rule"),
    [(0, "greater_than_equal"), (3651, "less_than_equal"), (366, "max_retention_days"), ("7", "int_type")],
)
def test_bad_retention_days_is_a_422_naming_the_field(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], value: object, rule: str
) -> None:
    """Given retention_days out of range (the schema's 1..3650, or above the operator's maximum of 365), when
    submitted, then 422 naming retention_days and the rule, and no job is created."""
    response = api.post("/v1/jobs", json={"items": ITEMS, "retention_days": value}, headers=tenant.headers)

    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert errors[0]["field"] == "retention_days" and errors[0]["rule"] == rule, errors
    assert api.get("/v1/jobs", headers=tenant.headers).json()["data"] == []


def test_the_document_states_the_operators_maximum(make_api: Any, model_version: Any) -> None:
    """Given an operator maximum of 90 days, the OpenAPI document's retention_days maximum is 90."""
    client = make_api(ApiSettings(max_job_retention_days=90, job_retention_days=30))
    prop = client.get("/openapi.json").json()["components"]["schemas"]["JobCreate"]["properties"]
    integer = next(option for option in prop["retention_days"]["anyOf"] if option.get("type") == "integer")
    assert (integer["minimum"], integer["maximum"]) == (1, 90)


def test_the_cli_submits_retention_days_and_shows_expires_at(
    pg_url: str,
    pg_factory: sessionmaker[Session],
    model_version: object,
    s3_store: ObjectStore,
    tmp_path: Path,
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given a live API, when `catalogan jobs submit --retention-days 3` runs and the job finishes, then
    `jobs show --json` carries retention_days 3 and expires_at; `--retention-days 400` (above the operator's
    365) is a usage error naming retention_days, exit 2, and creates no job."""
    cli_env = {"CATALOGAN_DATABASE_URL": pg_url, "CATALOGAN_DATA_DIR": str(tmp_path / "data")}
    created = CliRunner().invoke(cli, ["tenants", "create", "acme", "--with-key", "--json"], env=cli_env)
    tenant_json = json.loads(created.output)
    server = live_server_factory(_app(pg_factory, s3_store, [], tmp_path, ApiSettings(), WebhookSettings()))
    env = {**cli_env, "CATALOGAN_API_URL": server.url, "CATALOGAN_API_KEY": tenant_json["api_key"]}

    submitted = CliRunner().invoke(
        cli, ["jobs", "submit", "--category", "a=2", "--retention-days", "3"], env=env, prog_name="catalogan"
    )
    refused = CliRunner().invoke(
        cli,
        ["jobs", "submit", "--category", "a=2", "--retention-days", "400"],
        env=env,
        prog_name="catalogan",
    )

    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.output.strip()
    finish(pg_factory, job_id, utcnow())
    shown = CliRunner().invoke(cli, ["jobs", "show", job_id, "--json"], env=env, prog_name="catalogan")
    body = json.loads(shown.output)
    assert body["retention_days"] == 3 and body["expires_at"] is not None, shown.output
    # A usage error, as every bad input of `jobs submit` (click prints the usage line first).
    last = refused.output.strip().splitlines()[-1]
    assert refused.exit_code == 2 and last.startswith("Error: retention_days") and "365" in last, (
        refused.output
    )
    with pg_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
