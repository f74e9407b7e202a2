"""`DELETE /v1/jobs/{id}` on real PostgreSQL and a real SeaweedFS store: objects and rows go, others stay."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.cli_support import ExitCode
from db.engine import transaction
from db.job_deletion import job_prefix
from db.status import JobStatus
from db.storage import ObjectStore
from db.tables import Chunk, Job, JobItem
from scheduler.cli.root import cli
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app

ITEMS = [{"category": "a", "count": 3}]


@pytest.fixture
def api_store(s3_store: ObjectStore) -> ObjectStore:
    """The API's store is a real S3 (SeaweedFS) here."""
    return s3_store


def finished_job(
    api: httpx.Client,
    tenant: Credentials,
    store: ObjectStore,
    factory: sessionmaker[Session],
    status: JobStatus = JobStatus.SUCCEEDED,
) -> str:
    """A submitted job moved to `status`, with an image and a manifest object under its prefix (as a worker
    writes them)."""
    response = api.post("/v1/jobs", json={"items": ITEMS, "seed": 7}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    prefix = job_prefix(tenant.tenant_id, job_id)
    store.put(prefix + "a/00000000.png", b"png bytes")
    store.put(prefix + "manifest.jsonl", b"{}\n")
    with transaction(factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status))
    return job_id


def rows_of(factory: sessionmaker[Session], job_id: str) -> int:
    with factory() as session:
        return sum(
            session.scalar(select(func.count()).select_from(table).where(column == job_id)) or 0
            for table, column in ((Job, Job.id), (JobItem, JobItem.job_id), (Chunk, Chunk.job_id))
        )


def objects_of(store: ObjectStore, tenant: Credentials, job_id: str) -> list[str]:
    return [info.key for info in store.list(job_prefix(tenant.tenant_id, job_id))]


def test_delete_removes_the_jobs_objects_and_rows_and_nothing_else(
    api: TestClient, tenant: Credentials, api_store: ObjectStore, pg_factory: sessionmaker[Session]
) -> None:
    """Given two finished jobs with objects in S3, when one is deleted, then its objects and rows are gone,
    a second DELETE is a 404, and the other job keeps its objects and rows."""
    doomed = finished_job(api, tenant, api_store, pg_factory)
    kept = finished_job(api, tenant, api_store, pg_factory, JobStatus.FAILED)
    assert len(objects_of(api_store, tenant, doomed)) == 2 and rows_of(pg_factory, doomed) > 1

    response = api.delete(f"/v1/jobs/{doomed}", headers=tenant.headers)

    assert response.status_code == 204, response.text
    assert objects_of(api_store, tenant, doomed) == []
    assert rows_of(pg_factory, doomed) == 0
    assert api.get(f"/v1/jobs/{doomed}", headers=tenant.headers).status_code == 404
    assert api.delete(f"/v1/jobs/{doomed}", headers=tenant.headers).status_code == 404
    assert len(objects_of(api_store, tenant, kept)) == 2 and rows_of(pg_factory, kept) > 1


def test_another_tenants_job_is_a_404_and_is_left_alone(
    api: TestClient,
    tenant: Credentials,
    make_tenant: Callable[..., Credentials],
    api_store: ObjectStore,
    pg_factory: sessionmaker[Session],
) -> None:
    """Given another tenant's finished job, when this tenant deletes it, then 404 and nothing changes."""
    other = make_tenant(name="other-tenant")
    theirs = finished_job(api, other, api_store, pg_factory)

    response = api.delete(f"/v1/jobs/{theirs}", headers=tenant.headers)

    assert response.status_code == 404
    assert len(objects_of(api_store, other, theirs)) == 2 and rows_of(pg_factory, theirs) > 1


def test_an_unfinished_job_is_a_409_and_is_left_alone(
    api: TestClient, tenant: Credentials, api_store: ObjectStore, pg_factory: sessionmaker[Session]
) -> None:
    """Given a running job, when it is deleted, then 409 (cancel first) and its objects and rows stay."""
    running = finished_job(api, tenant, api_store, pg_factory, JobStatus.RUNNING)

    response = api.delete(f"/v1/jobs/{running}", headers=tenant.headers)

    assert response.status_code == 409
    assert "cancel" in response.json()["detail"]
    assert len(objects_of(api_store, tenant, running)) == 2 and rows_of(pg_factory, running) > 1


def test_the_cli_deletes_a_finished_job_and_refuses_a_running_one(
    pg_url: str,
    pg_factory: sessionmaker[Session],
    model_version: object,
    s3_store: ObjectStore,
    tmp_path: Path,
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given a live API on S3, when `catalogan jobs delete` runs on a finished and on a running job, then the
    first is gone (objects and rows) and the second is one line with exit 4, unchanged."""
    cli_env = {"CATALOGAN_DATABASE_URL": pg_url, "CATALOGAN_DATA_DIR": str(tmp_path / "data")}
    created = CliRunner().invoke(cli, ["tenants", "create", "acme", "--with-key", "--json"], env=cli_env)
    tenant_json = json.loads(created.output)
    tenant = Credentials(tenant_json["id"], tenant_json["api_key"], "")
    server = live_server_factory(_app(pg_factory, s3_store, [], tmp_path, ApiSettings(), WebhookSettings()))
    env = {**cli_env, "CATALOGAN_API_URL": server.url, "CATALOGAN_API_KEY": tenant.api_key}
    with httpx.Client(base_url=server.url) as http:
        done = finished_job(http, tenant, s3_store, pg_factory)
        running = finished_job(http, tenant, s3_store, pg_factory, JobStatus.RUNNING)

    deleted = CliRunner().invoke(cli, ["jobs", "delete", done], env=env, prog_name="catalogan")
    refused = CliRunner().invoke(cli, ["jobs", "delete", running], env=env, prog_name="catalogan")

    assert deleted.exit_code == 0 and "deleted" in deleted.output, deleted.output
    assert objects_of(s3_store, tenant, done) == [] and rows_of(pg_factory, done) == 0
    assert refused.exit_code == ExitCode.CONFLICT, refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert len(objects_of(s3_store, tenant, running)) == 2 and rows_of(pg_factory, running) > 1
