"""A job's `metadata` over `/v1/jobs` on real PostgreSQL: stored, returned, filtered, and bounded."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.storage import MemoryStore
from db.tables import Job
from db.webhook_events import job_event_data
from scheduler.cli.root import cli
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app

ITEMS = [{"category": "a", "count": 2}]


def run(args: list[str], env: dict[str, str]) -> Result:
    """Invoke `catalogan` with `env` (CliRunner captures output and exit code)."""
    return CliRunner().invoke(cli, args, env=env, prog_name="catalogan")


def submit(api: TestClient, tenant: Credentials, metadata: dict[str, str] | None = None) -> dict:
    body = {"items": ITEMS, "seed": 7, **({"metadata": metadata} if metadata is not None else {})}
    response = api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_metadata_is_returned_by_submit_show_and_list(api: TestClient, tenant: Credentials) -> None:
    """Given a job submitted with metadata, when shown and listed, then every view carries the same labels."""
    labels = {"batch": "spring-2027", "owner.team": "etl-nightly"}
    job = submit(api, tenant, labels)
    plain = submit(api, tenant)

    assert job["metadata"] == labels
    assert api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json()["metadata"] == labels
    listed = {
        row["id"]: row["metadata"] for row in api.get("/v1/jobs", headers=tenant.headers).json()["data"]
    }
    assert listed == {job["id"]: labels, plain["id"]: {}}


def test_jobs_are_filtered_by_every_metadata_pair(
    api: TestClient, tenant: Credentials, make_tenant: Callable[..., Credentials]
) -> None:
    """Given jobs with different labels (and another tenant's with the same), when listing with
    metadata filters, then only this tenant's jobs matching all pairs are listed."""
    spring_a = submit(api, tenant, {"batch": "spring", "owner": "a"})
    submit(api, tenant, {"batch": "spring", "owner": "b"})
    submit(api, tenant, {"batch": "autumn", "owner": "a"})
    submit(api, tenant)
    other = make_tenant(name="other-tenant")
    submit(api, other, {"batch": "spring", "owner": "a"})

    def ids(*pairs: str) -> list[str]:
        response = api.get("/v1/jobs", params={"metadata": list(pairs)}, headers=tenant.headers)
        assert response.status_code == 200, response.text
        return [row["id"] for row in response.json()["data"]]

    assert ids("batch=spring", "owner=a") == [spring_a["id"]]
    assert len(ids("batch=spring")) == 2
    assert ids("batch=winter") == []


def test_metadata_breaking_a_bound_is_a_422_naming_the_field_and_creates_nothing(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given metadata with a bad key, too long a value or too many keys, when submitting, then the 422
    names `metadata` and its rule, and no job row exists."""
    bad = [
        ({"Bad Key": "x"}, "[a-z0-9_.-]"),
        ({"k": "x" * 513}, "at most 512 characters, no NUL"),
        ({"k": "a\x00b"}, "no NUL"),
        ({f"k{i}": "x" for i in range(17)}, "at most 16 keys"),
        ({"k" * 65: "x"}, "1 to 64 characters"),
    ]
    for metadata, rule in bad:
        response = api.post("/v1/jobs", json={"items": ITEMS, "metadata": metadata}, headers=tenant.headers)
        assert response.status_code == 422, response.text
        error = response.json()["errors"][0]
        assert error["field"].startswith("metadata") and rule in error["message"], error
    with pg_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_malformed_metadata_filter_is_a_422_naming_metadata(api: TestClient, tenant: Credentials) -> None:
    """Given a filter without '=' or with a bad key, when listing, then the 422 names `metadata`."""
    for pair in ("batch", "Bad Key=x", "batch=a\x00b"):
        response = api.get("/v1/jobs", params={"metadata": pair}, headers=tenant.headers)
        assert response.status_code == 422, response.text
        assert "metadata" in response.json()["errors"][0]["field"]


def test_the_cli_submits_labels_and_lists_by_them(
    pg_url: str,
    pg_factory: sessionmaker[Session],
    model_version: object,
    tmp_path: Path,
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given a live API, when a client submits two jobs with `--metadata` and lists with `--metadata`, then only
    the matching job is listed with its labels; a pair without '=' or a bad key is a usage error (exit 2) naming metadata."""
    cli_env = {"CATALOGAN_DATABASE_URL": pg_url, "CATALOGAN_DATA_DIR": str(tmp_path / "data")}
    tenant = json.loads(run(["tenants", "create", "acme", "--with-key", "--json"], cli_env).output)
    server = live_server_factory(
        _app(pg_factory, MemoryStore(), [], tmp_path, ApiSettings(), WebhookSettings())
    )
    env = {**cli_env, "CATALOGAN_API_URL": server.url, "CATALOGAN_API_KEY": tenant["api_key"]}
    submit_args = ["jobs", "submit", "--category", "a=2", "--json"]
    spring = run([*submit_args, "--metadata", "batch=spring", "--metadata", "owner=etl"], env)
    assert spring.exit_code == 0, spring.output
    autumn = run([*submit_args, "--metadata", "batch=autumn"], env)
    assert autumn.exit_code == 0, autumn.output

    listed = run(["jobs", "ls", "--metadata", "batch=spring", "--json"], env)

    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [row["id"] for row in rows] == [json.loads(spring.output)["id"]]
    assert rows[0]["metadata"] == {"batch": "spring", "owner": "etl"}
    no_pair = run(["jobs", "ls", "--metadata", "batch"], env)
    assert no_pair.exit_code == 2 and "--metadata" in no_pair.output
    bad_key = run([*submit_args, "--metadata", "Bad Key=x"], env)
    assert bad_key.exit_code == 2, bad_key.output
    error = bad_key.output.strip().splitlines()[-1]
    assert error.startswith("Error: metadata") and "[a-z0-9_.-]" in error, bad_key.output


def test_a_job_event_carries_the_jobs_metadata(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given a stored job with metadata, when its webhook event data is built, then it carries the labels."""
    job_id = submit(api, tenant, {"batch": "spring"})["id"]
    with pg_factory() as session:
        data = job_event_data(session.get_one(Job, job_id))
    assert data["job_id"] == job_id and data["metadata"] == {"batch": "spring"}
