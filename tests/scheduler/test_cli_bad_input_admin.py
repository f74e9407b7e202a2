"""Bad input to the operator and client commands (tenants, keys, beat, jobs watch, serve, listings): one line
naming the option and its rule, a usage exit code (2) or a configuration one (6), no traceback, nothing
written."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from db.cli_support import ExitCode
from db.job_specs import MAX_URL_LENGTH
from db.tables import ApiKey, Tenant
from db.tenants import MAX_TENANT_NAME_CHARS
from scheduler.cli.keys import MAX_KEY_NAME_LENGTH
from scheduler.cli.root import cli


def run(args: list[str], env: dict[str, str]) -> Result:
    """Invoke `catalogan` with `env` (CliRunner captures output and exit code)."""
    return CliRunner().invoke(cli, args, env=env, prog_name="catalogan")


def assert_usage_error(result: Result, option: str) -> None:
    """Exit 2, click's one `Error:` line naming `option`, and no traceback."""
    assert result.exit_code == ExitCode.USAGE, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
def pg_env(pg_url: str, tmp_path: Path) -> dict[str, str]:
    """CATALOGAN_* for direct-SQL commands on the test PostgreSQL."""
    return {"CATALOGAN_DATABASE_URL": pg_url, "CATALOGAN_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    """An embedded data folder that must stay uncreated, and an API nobody answers on."""
    return {
        "CATALOGAN_DATA_DIR": str(tmp_path / "data"),
        "CATALOGAN_DATABASE_URL": "",
        "CATALOGAN_API_KEY": "cg_x",
        "CATALOGAN_API_URL": "http://127.0.0.1:9",
    }


def test_the_cli_length_limits_are_the_columns_widths() -> None:
    assert Tenant.__table__.c.name.type.length == MAX_TENANT_NAME_CHARS  # type: ignore[attr-defined]
    assert ApiKey.__table__.c.name.type.length == MAX_KEY_NAME_LENGTH  # type: ignore[attr-defined]
    assert Tenant.__table__.c.webhook_url.type.length == MAX_URL_LENGTH  # type: ignore[attr-defined]


def test_values_longer_than_their_postgresql_columns_are_usage_errors_and_nothing_is_written(
    pg_env: dict[str, str],
) -> None:
    """A 65-character key --name and a 2,100-character --webhook-url were StringDataRightTruncation tracebacks
    on PostgreSQL (and kept whole by SQLite): each is now exit 2 naming the option, before any row."""
    assert run(["tenants", "create", "acme"], pg_env).exit_code == 0

    long_name = run(["keys", "create", "--tenant", "acme", "--name", "n" * 65], pg_env)
    assert_usage_error(long_name, "--name")
    assert "at most 64" in long_name.output
    fits = run(["keys", "create", "--tenant", "acme", "--name", "n" * 64, "--json"], pg_env)
    assert fits.exit_code == 0, fits.output

    long_url = "https://hooks.example.com/" + "a" * 2100
    too_long = run(["tenants", "create", "globex", "--webhook-url", long_url], pg_env)
    assert_usage_error(too_long, "--webhook-url")
    assert f"at most {MAX_URL_LENGTH}" in too_long.output

    long_tenant = run(["tenants", "create", "t" * 65], pg_env)
    assert long_tenant.exit_code == 2, long_tenant.output
    assert "tenant name: 65 characters; at most 64" in long_tenant.output
    assert "Traceback" not in long_tenant.output

    keys = json.loads(run(["keys", "ls", "--json"], pg_env).output)
    assert [key["name"] for key in keys] == ["n" * 64]
    tenants = json.loads(run(["tenants", "ls", "--json"], pg_env).output)
    assert [tenant["name"] for tenant in tenants] == ["acme"]


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",
        "ftp://x/y",
        "https://",
        "http://user:pw@hooks.example.com/x",
        "http://hooks.example.com:99999/x",
        "http://[::1/x",
        "https://[2001:db8::1]/x",  # the API's pattern: a DNS name or an IPv4 address
    ],
)
def test_a_tenant_webhook_url_follows_the_apis_url_rule(
    offline_env: dict[str, str], tmp_path: Path, url: str
) -> None:
    """`tenants create acme --webhook-url notaurl` stored it (exit 0) though the API refuses the same value on
    a job: now a usage error naming --webhook-url, checked before the database is opened."""
    result = run(["tenants", "create", "acme", "--webhook-url", url], offline_env)
    assert_usage_error(result, "--webhook-url")
    assert not (tmp_path / "data").exists()


def test_a_tenant_webhook_url_on_a_private_address_is_stored_and_guarded_at_delivery(
    pg_env: dict[str, str],
) -> None:
    """The API never resolves a tenant's default at submit; the dispatcher checks its addresses before each
    delivery. So the CLI does not resolve it either: an internal receiver (allowed with
    CATALOGAN_WEBHOOK_ALLOW_PRIVATE_TARGETS) can be configured."""
    for name, url in [("acme", "http://10.0.0.7:8080/hook"), ("globex", "https://hooks.example.com/c?x=1")]:
        created = run(["tenants", "create", name, "--webhook-url", url], pg_env)
        assert created.exit_code == 0, created.output
    tenants = json.loads(run(["tenants", "ls", "--json"], pg_env).output)
    assert [tenant["webhook_url"] for tenant in tenants] == [
        "http://10.0.0.7:8080/hook",
        "https://hooks.example.com/c?x=1",
    ]


@pytest.mark.parametrize("grace", ["nan", "inf", "-1", "169"])
def test_rotate_webhook_secret_refuses_a_grace_that_is_not_a_finite_number_in_range(
    offline_env: dict[str, str], tmp_path: Path, grace: str
) -> None:
    """`--grace-hours nan` was "cannot convert float NaN to integer"."""
    result = run(["tenants", "rotate-webhook-secret", "acme", "--grace-hours", grace], offline_env)
    assert_usage_error(result, "--grace-hours")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["tenants", "ls", "--format", "tsv", "--json"],
        ["tenants", "ls", "--json", "--format", "table"],
        ["keys", "ls", "--format", "tsv", "--json"],
        ["dlq", "ls", "--format", "table", "--json"],
        ["workers", "--format", "tsv", "--json"],
        ["jobs", "ls", "--format", "tsv", "--json"],
    ],
)
def test_json_with_another_format_is_a_usage_error_naming_both(
    offline_env: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    """`tenants ls --format tsv --json` printed JSON without a word."""
    result = run(args, offline_env)
    assert_usage_error(result, "--json")
    assert "--format" in result.output.splitlines()[-1]
    assert not (tmp_path / "data").exists()


def test_json_with_format_json_still_agrees(offline_env: dict[str, str]) -> None:
    result = run(["tenants", "ls", "--format", "json", "--json"], offline_env)
    assert "conflict" not in result.output


def test_a_heartbeat_file_in_a_folder_that_cannot_hold_it_is_refused_before_beat_starts(
    offline_env: dict[str, str], tmp_path: Path
) -> None:
    """`beat --heartbeat-file afile/x --once` (afile a regular file) ran a pass, logged a NotADirectoryError
    traceback and exited 1 with "1 periodic step(s) failed"."""
    (tmp_path / "afile").write_text("a file, not a folder")
    for path in (tmp_path / "afile" / "x", tmp_path / "nofolder" / "beat.alive"):
        result = run(["beat", "--heartbeat-file", str(path), "--once"], offline_env)
        assert_usage_error(result, "--heartbeat-file")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--check-heartbeat", "HEARTBEAT", "--max-age", "nan"], "--max-age"),
        (["--check-heartbeat", "HEARTBEAT", "--max-age", "inf"], "--max-age"),
        (["--check-heartbeat", "HEARTBEAT", "--max-age", "0.5"], "--max-age"),
        (["--interval", "-1", "--once"], "--interval"),
        (["--interval", "nan", "--once"], "--interval"),
        (["--interval", "0", "--once"], "--interval"),
        (["--interval", "3601", "--once"], "--interval"),
    ],
)
def test_beat_numbers_must_be_finite_and_in_range(
    offline_env: dict[str, str], tmp_path: Path, args: list[str], option: str
) -> None:
    """`--max-age nan` called a day-old heartbeat healthy (exit 0); `--interval -1`/`nan` ran the reaper every
    tick and `--interval 0` silently meant the default."""
    heartbeat = tmp_path / "old.alive"
    heartbeat.touch()
    day_ago = time.time() - 86_400
    os.utime(heartbeat, (day_ago, day_ago))
    args = [str(heartbeat) if arg == "HEARTBEAT" else arg for arg in args]
    result = run(["beat", *args], offline_env)
    assert_usage_error(result, option)
    assert not (tmp_path / "data").exists()


def test_a_stale_heartbeat_is_still_stale_with_a_finite_max_age(
    offline_env: dict[str, str], tmp_path: Path
) -> None:
    heartbeat = tmp_path / "old.alive"
    heartbeat.touch()
    day_ago = time.time() - 86_400
    os.utime(heartbeat, (day_ago, day_ago))
    assert run(["beat", "--check-heartbeat", str(heartbeat), "--max-age", "60"], offline_env).exit_code == 1
    heartbeat.touch()
    assert run(["beat", "--check-heartbeat", str(heartbeat), "--max-age", "60"], offline_env).exit_code == 0


@pytest.mark.parametrize("interval", ["-1", "nan", "0", "0.05", "inf"])
def test_jobs_watch_interval_must_be_a_finite_pause(offline_env: dict[str, str], interval: str) -> None:
    """`jobs watch --interval -1` was "sleep length must be non-negative", `nan` "Invalid value NaN", and `0`
    polled the API without pausing."""
    result = run(["jobs", "watch", "a" * 32, "--interval", interval], offline_env)
    assert_usage_error(result, "--interval")


@pytest.mark.parametrize("url", ["notaurl", "http://[::1", "ftp://api.example.com", "http://api:0"])
def test_a_malformed_api_url_is_a_configuration_error_naming_the_variable(
    offline_env: dict[str, str], url: str
) -> None:
    """`CATALOGAN_API_URL=notaurl` exited 5 with "GET notaurl/v1/jobs: ..." (an outage) and `http://[::1`
    printed urllib's "Invalid IPv6 URL": both are exit 6 naming the variable, before any request."""
    result = run(["jobs", "ls"], {**offline_env, "CATALOGAN_API_URL": url})
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert result.output.startswith("Error: CATALOGAN_API_URL: must be http(s)://host[:port][/path]")
    assert len(result.output.strip().splitlines()) == 1


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every `uvicorn.run` call; none starts a server."""
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda _app, **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize("host", ["not a host!!", "", "a..b", "host.invalid"])
def test_serve_refuses_a_host_it_cannot_bind_naming_host(
    uvicorn_runs: list[dict[str, Any]], host: str
) -> None:
    """`serve --host 'not a host!!'` exited 3 with uvicorn's "[Errno -2] Name or service not known"."""
    result = run(["serve", "--host", host], {})
    assert_usage_error(result, "--host")
    assert uvicorn_runs == []


def test_serve_names_a_bad_api_host_setting(uvicorn_runs: list[dict[str, Any]]) -> None:
    result = run(["serve"], {"CATALOGAN_API_HOST": "not a host!!"})
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert result.output.startswith("Error: CATALOGAN_API_HOST: ") and "not a host" not in result.output
    assert uvicorn_runs == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1", "localhost"])
def test_serve_binds_ip_addresses_and_names_that_resolve(
    uvicorn_runs: list[dict[str, Any]], host: str
) -> None:
    result = run(["serve", "--host", host], {})
    assert result.exit_code == 0, result.output
    assert uvicorn_runs[-1]["host"] == host


def test_the_tenant_webhook_url_rule_is_the_apis() -> None:
    from scheduler.api.schemas import WEBHOOK_URL_PATTERN
    from scheduler.cli import tenants

    assert tenants.WEBHOOK_URL_PATTERN == WEBHOOK_URL_PATTERN
