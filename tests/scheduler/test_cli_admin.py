"""The operator and client commands: tenants, keys, jobs (through the API), workers, dlq — on real services."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import quarantine_chunk
from db.cli_support import ExitCode
from db.engine import transaction
from db.images import manifest_keys
from db.status import JobStatus
from db.storage import MemoryStore
from db.tables import Chunk, Job
from scheduler.cli.root import cli
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import LiveServer, _app


def run(args: list[str], env: dict[str, str]) -> Result:
    """Invoke `catalogan` with `env` (CliRunner captures output and exit code)."""
    return CliRunner().invoke(cli, args, env=env, prog_name="catalogan")


@pytest.fixture
def cli_env(pg_url: str, tmp_path: Path) -> dict[str, str]:
    """CATALOGAN_* for direct-SQL commands on the test PostgreSQL."""
    return {"CATALOGAN_DATABASE_URL": pg_url, "CATALOGAN_DATA_DIR": str(tmp_path / "data")}


def test_tenants_and_keys_lifecycle(cli_env: dict[str, str], pg_url: str) -> None:
    """Given an empty database, when an operator creates a tenant with a key, lists and revokes it,
    then each step shows up in the listings and a second tenant with the same name is refused (exit 4)."""
    created = run(["tenants", "create", "acme", "--images-per-day", "500", "--with-key", "--json"], cli_env)
    assert created.exit_code == 0, created.output
    tenant = json.loads(created.output)
    assert tenant["api_key"].startswith("cg_") and tenant["webhook_secret"].startswith("whsec_")

    listed = json.loads(run(["tenants", "ls", "--json"], cli_env).output)
    assert [(t["name"], t["images_per_day"], t["keys"]) for t in listed] == [("acme", 500, 1)]

    second = json.loads(
        run(["keys", "create", "--tenant", "acme", "--name", "etl", "--json"], cli_env).output
    )
    keys = json.loads(run(["keys", "ls", "--tenant", "acme", "--json"], cli_env).output)
    assert {k["name"] for k in keys} == {"default", "etl"}
    assert all("api_key" not in k and tenant["api_key"] not in json.dumps(k) for k in keys)

    revoked = run(["keys", "revoke", second["id"]], cli_env)
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    keys = json.loads(run(["keys", "ls", "--json"], cli_env).output)
    assert [k["revoked_at"] is not None for k in sorted(keys, key=lambda k: k["name"])] == [False, True]

    duplicate = run(["tenants", "create", "acme"], cli_env)
    assert duplicate.exit_code == ExitCode.CONFLICT and duplicate.output.startswith("Error:")
    missing = run(["keys", "revoke", "nope"], cli_env)
    assert missing.exit_code == ExitCode.NOT_FOUND and len(missing.output.strip().splitlines()) == 1


def test_jobs_commands_work_through_the_api(
    cli_env: dict[str, str],
    pg_factory: sessionmaker[Session],
    model_version: Any,
    tmp_path: Path,
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given a live API, when a client lists, shows, cancels and exports jobs with the CLI, then each command
    answers from the API, and a missing job is one line with exit code 3."""
    tenant = json.loads(run(["tenants", "create", "acme", "--with-key", "--json"], cli_env).output)
    published: list[Any] = []
    store = MemoryStore()
    server = live_server_factory(
        _app(pg_factory, store, published, tmp_path, ApiSettings(), WebhookSettings())
    )
    env = {**cli_env, "CATALOGAN_API_URL": server.url, "CATALOGAN_API_KEY": tenant["api_key"]}
    import httpx

    job_id = httpx.post(
        f"{server.url}/v1/jobs",
        json={"items": [{"category": "a", "count": 2}]},
        headers={"Authorization": f"Bearer {tenant['api_key']}"},
    ).json()["id"]

    listed = run(["jobs", "ls", "--json"], env)
    assert listed.exit_code == 0, listed.output
    assert [job["id"] for job in json.loads(listed.output)] == [job_id]
    table = run(["jobs", "ls"], {**env, "COLUMNS": "200"})
    assert job_id in table.output and "queued" in table.output
    shown = json.loads(run(["jobs", "show", job_id, "--json"], env).output)
    assert shown["counts"]["images_total"] == 2
    cancelled = run(["jobs", "cancel", job_id], env)
    assert cancelled.exit_code == 0 and "cancelling" in cancelled.output
    not_ready = run(["jobs", "export", job_id], env)
    assert not_ready.exit_code == ExitCode.CONFLICT
    missing = run(["jobs", "show", "0" * 32], env)
    assert missing.exit_code == ExitCode.NOT_FOUND and missing.output.startswith("Error: HTTP 404")
    no_key = run(["jobs", "ls"], {**env, "CATALOGAN_API_KEY": ""})
    assert no_key.exit_code == ExitCode.CONFIG

    # The job ends: watch reports it, export writes the manifest as CSV, safe to open in a spreadsheet.
    jsonl_key, _ = manifest_keys(tenant["id"], job_id)
    store.put(
        jsonl_key,
        # An SKU and an error text a spreadsheet would run as formulas: the CSV makes them text (a leading ')
        b'{"index": 0, "sku": "=1+2", "category": "a", "key": "k", "sha256": "ab", "status": "succeeded", '
        b'"error": "@SUM(A1)"}\n',
    )
    with transaction(pg_factory) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED, manifest_key=jsonl_key)
        )
    watched = run(["jobs", "watch", job_id, "--interval", "0.1"], env)
    assert watched.exit_code == 0 and f"job {job_id} succeeded" in watched.output
    out = tmp_path / "manifest.csv"
    exported = run(["jobs", "export", job_id, "--format", "csv", "--out", str(out)], env)
    assert exported.exit_code == 0, exported.output
    assert out.read_text().splitlines() == [
        "index,sku,category,key,sha256,seed,model_version,status,error,review",
        "0,'=1+2,a,k,ab,,,succeeded,'@SUM(A1),pending",
    ]
    with transaction(pg_factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.FAILED))
    assert run(["jobs", "watch", job_id], env).exit_code == ExitCode.JOB_FAILED
    with transaction(pg_factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.COMPLETED_WITH_FAILURES))
    partial = run(["jobs", "watch", job_id], env)
    assert partial.exit_code == ExitCode.COMPLETED_WITH_FAILURES == 10, partial.output


def test_dlq_lists_and_retries_quarantined_chunks(
    cli_env: dict[str, str], pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given a failed job with a quarantined chunk, when the operator lists the DLQ and retries the job,
    then the chunk is listed with its error and goes back to pending."""
    from db.planning import JobSpec, plan_job

    tenant = json.loads(run(["tenants", "create", "acme", "--json"], cli_env).output)
    with transaction(pg_factory) as session:
        spec = JobSpec(model="tiny", items=[{"category": "a", "count": 2}], chunk_size=2)  # type: ignore[list-item]
        planned = plan_job(session, spec, tenant_id=tenant["id"], model_version=model_version)
        quarantine_chunk(session, planned.chunk_ids[0], error="CUDA out of memory")
        session.query(Job).filter(Job.id == planned.job_id).update({"status": JobStatus.FAILED})

    listed = json.loads(run(["dlq", "ls", "--json"], cli_env).output)
    assert [(row["chunk"], row["job"], row["error"]) for row in listed] == [
        (planned.chunk_ids[0], planned.job_id, "CUDA out of memory")
    ]
    retried = run(["dlq", "retry", planned.job_id, "--json"], cli_env)
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.output)["chunks"] == [planned.chunk_ids[0]]
    with pg_factory() as session:
        assert session.scalar(select(Chunk.status).where(Chunk.id == planned.chunk_ids[0])) == "pending"
    assert json.loads(run(["dlq", "ls", "--json"], cli_env).output) == []


def test_dlq_retry_publishes_through_the_tenants_window_and_leaves_the_rest_held(
    cli_env: dict[str, str], pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given a failed job of three quarantined chunks and a publish window of one chunk, when the operator
    retries it, then one chunk is published and the other two stay held (pending, never sent), as a retry
    through the API does: before, all three were sent and every pending chunk marked published."""
    from db.planning import JobSpec, plan_job

    tenant = json.loads(run(["tenants", "create", "acme", "--json"], cli_env).output)
    with transaction(pg_factory) as session:
        spec = JobSpec(model="tiny", items=[{"category": "a", "count": 6}], chunk_size=2)  # type: ignore[list-item]
        planned = plan_job(session, spec, tenant_id=tenant["id"], model_version=model_version)
        for chunk_id in planned.chunk_ids:
            quarantine_chunk(session, chunk_id, error="CUDA out of memory")
        session.query(Job).filter(Job.id == planned.job_id).update({"status": JobStatus.FAILED})
    retried = run(
        ["dlq", "retry", planned.job_id, "--json"], {**cli_env, "CATALOGAN_PUBLISH_WINDOW_CHUNKS": "1"}
    )
    assert retried.exit_code == 0, retried.output
    body = json.loads(retried.output)
    assert body["chunks"] == list(planned.chunk_ids) and len(body["published"]) == 1
    with pg_factory() as session:
        rows = session.execute(
            select(Chunk.id, Chunk.status, Chunk.enqueued_at).where(Chunk.job_id == planned.job_id)
        ).all()
    assert {status for _, status, _ in rows} == {"pending"}
    assert sorted(chunk_id for chunk_id, _, enqueued in rows if enqueued is not None) == body["published"]


def _failed_job(
    cli_env: dict[str, str], pg_factory: sessionmaker[Session], model_version: Any, error: str
) -> tuple[str, tuple[int, ...]]:
    """A failed job of acme's whose one chunk is quarantined with `error`: (job id, chunk ids)."""
    from db.planning import JobSpec, plan_job

    tenant = json.loads(run(["tenants", "create", "acme", "--json"], cli_env).output)
    with transaction(pg_factory) as session:
        spec = JobSpec(model="tiny", items=[{"category": "a", "count": 2}], chunk_size=2)  # type: ignore[list-item]
        planned = plan_job(session, spec, tenant_id=tenant["id"], model_version=model_version)
        quarantine_chunk(session, planned.chunk_ids[0], error=error)
        session.query(Job).filter(Job.id == planned.job_id).update({"status": JobStatus.FAILED})
    return planned.job_id, tuple(planned.chunk_ids)


def test_dlq_retry_with_a_broker_that_does_not_answer_says_nothing_was_published(
    cli_env: dict[str, str], pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given a failed job with a quarantined chunk and a broker that refuses connections, when the operator
    retries it with --json, then the chunk is pending again, `published` is empty, and stderr is one warning
    line, exit 0 (the reaper publishes it later): before, `published` listed the chunk as sent and a page of
    kombu traceback followed."""
    job_id, chunk_ids = _failed_job(cli_env, pg_factory, model_version, "CUDA out of memory")
    result = run(
        ["dlq", "retry", job_id, "--json"], {**cli_env, "CATALOGAN_BROKER_URL": "redis://127.0.0.1:1/0"}
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["chunks"] == list(chunk_ids) and body["published"] == []
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [result.stderr.strip()]
    assert (
        result.stderr.startswith("Warning: the broker did not take the chunks")
        and "catalogan beat" in result.stderr
    )
    with pg_factory() as session:
        status, enqueued_at = session.execute(
            select(Chunk.status, Chunk.enqueued_at).where(Chunk.id == chunk_ids[0])
        ).one()
    assert status == "pending" and enqueued_at is not None  # marked published: the reaper's lost-message step


def test_dlq_ls_of_a_job_that_does_not_exist_is_not_found(
    cli_env: dict[str, str], pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given a DLQ holding one job's chunk, when `dlq ls --job` names a job that does not exist, then one line
    naming --job and the id, exit 3 (as `keys ls --tenant nosuch`): before, an empty listing, exit 0."""
    job_id, _ = _failed_job(cli_env, pg_factory, model_version, "CUDA out of memory")
    missing = run(["dlq", "ls", "--job", "nosuch"], cli_env)
    assert missing.exit_code == ExitCode.NOT_FOUND, missing.output
    assert missing.stderr.strip() == "Error: --job: job 'nosuch' not found"
    assert len(json.loads(run(["dlq", "ls", "--job", job_id, "--json"], cli_env).output)) == 1


def test_dlq_ls_truncates_a_long_error_only_in_the_terminal_table(
    cli_env: dict[str, str], pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given a chunk quarantined with a 500-character error, when the DLQ is listed, then --json and TSV carry
    the whole error and only the aligned table shortens it: before, --json cut it at 200 characters."""
    error = "RuntimeError: " + "x" * 486
    _failed_job(cli_env, pg_factory, model_version, error)
    as_json = run(["dlq", "ls", "--json"], cli_env)
    assert [row["error"] for row in json.loads(as_json.output)] == [error]
    tsv = run(["dlq", "ls", "--format", "tsv"], cli_env).output.splitlines()
    assert tsv[1].split("\t")[6] == error
    table = run(["dlq", "ls", "--format", "table"], cli_env).output
    assert error[:200] in table and error not in table


def test_workers_shows_queue_depths_from_redis(cli_env: dict[str, str], redis_url: str) -> None:
    """Given two messages waiting on the bulk queue, when `catalogan workers --json` runs, then it reports
    a depth of 2 for bulk and no live worker."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.rpush("bulk", b"m1", b"m2")
    result = run(["workers", "--json"], {**cli_env, "CATALOGAN_BROKER_URL": redis_url})
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["queues"]["bulk"] == 2 and body["queues"]["interactive"] == 0
    assert body["workers"] == []


def test_alive_on_counts_a_worker_that_holds_a_live_lease_but_answers_no_ping(
    cli_env: dict[str, str], redis_url: str, pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """The worker container's healthcheck (`workers --alive-on $HOSTNAME`): a busy solo-pool worker answers
    no ping, so a live lease must keep it healthy. Leases name their holder `host:pid`, pings `name@host`."""
    from db.chunks import claim_chunk
    from db.planning import JobSpec, plan_job

    tenant = json.loads(run(["tenants", "create", "acme", "--json"], cli_env).output)
    with transaction(pg_factory) as session:
        spec = JobSpec(model="tiny", items=[{"category": "a", "count": 2}], chunk_size=1)  # type: ignore[list-item]
        planned = plan_job(session, spec, tenant_id=tenant["id"], model_version=model_version)
    # Given a chunk leased by a worker process on host vm-a (no Celery worker runs, so nothing answers a ping)
    # and one whose lease on vm-b has expired
    with transaction(pg_factory) as session:
        assert claim_chunk(session, planned.chunk_ids[0], worker="vm-a:12345", lease_seconds=300) is not None
        assert claim_chunk(session, planned.chunk_ids[1], worker="vm-b:7", lease_seconds=-1) is not None
    env = {**cli_env, "CATALOGAN_BROKER_URL": redis_url}
    # When the healthcheck runs on vm-a, then it passes and names the lease holder
    alive = run(["workers", "--alive-on", "vm-a"], env)
    assert alive.exit_code == 0, alive.output
    assert alive.output.split() == ["vm-a:12345"]
    # And on vm-b (expired lease), on a host whose name is a prefix of vm-a's, and on another host, it fails
    for host in ("vm-b", "vm", "vm-c"):
        dead = run(["workers", "--alive-on", host], env)
        assert dead.exit_code == 1 and f"no worker on {host} answers a ping or holds a lease" in dead.output


def test_alive_on_reads_live_leases_on_the_database_clock_not_this_hosts(
    cli_env: dict[str, str],
    redis_url: str,
    pg_factory: sessionmaker[Session],
    model_version: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A healthcheck host whose clock runs an hour ahead still sees a 300 s lease taken a moment ago as live:
    lease times are the database's (docs/architecture.md), so the CLI compares them on that clock too."""
    from db.chunks import claim_chunk
    from db.planning import JobSpec, plan_job
    from tests.clock_skew import skew_host_clock

    tenant = json.loads(run(["tenants", "create", "acme", "--json"], cli_env).output)
    with transaction(pg_factory) as session:
        spec = JobSpec(model="tiny", items=[{"category": "a", "count": 1}], chunk_size=1)  # type: ignore[list-item]
        planned = plan_job(session, spec, tenant_id=tenant["id"], model_version=model_version)
        assert claim_chunk(session, planned.chunk_ids[0], worker="vm-a:1", lease_seconds=300) is not None
    # When the healthcheck runs on a host an hour ahead, then the live lease keeps vm-a healthy
    skew_host_clock(monkeypatch, dt.timedelta(hours=1))
    alive = run(["workers", "--alive-on", "vm-a"], {**cli_env, "CATALOGAN_BROKER_URL": redis_url})
    assert alive.exit_code == 0, alive.output
    assert alive.output.split() == ["vm-a:1"]


def test_serve_refuses_a_bad_chunk_size_setting_at_start_in_one_line() -> None:
    # Given a default chunk size outside 1–4096
    env = {"CATALOGAN_CHUNK_SIZE_BACKFILL": "0"}
    # When `catalogan serve` starts
    result = run(["serve"], env)
    # Then it stops before serving, with one line naming the variable, and exit code 6 (configuration)
    assert result.exit_code == 6, result.output
    assert "CATALOGAN_CHUNK_SIZE_BACKFILL" in result.output and len(result.output.strip().splitlines()) == 1


def test_quota_options_are_bounded_and_a_bad_tenant_name_is_a_usage_error(cli_env: dict[str, str]) -> None:
    """A quota over the database's 32-bit column was a 90-line DataError traceback, and a tenant name
    breaking a key rule exited 5 ("unavailable"): both are usage errors (exit 2), one line, nothing made."""
    too_big = run(["tenants", "create", "big", "--images-per-day", "3000000000"], cli_env)
    assert too_big.exit_code == 2 and "--images-per-day" in too_big.output, too_big.output
    for name in ("", "a/b", "."):
        bad = run(["tenants", "create", name], cli_env)
        assert bad.exit_code == ExitCode.USAGE, (name, bad.output)
        assert bad.output.startswith("Error:") and len(bad.output.strip().splitlines()) == 1, bad.output
    assert json.loads(run(["tenants", "ls", "--json"], cli_env).output) == []
