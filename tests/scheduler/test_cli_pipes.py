"""The CLI as scripts use it: piped output is TSV and never truncated; a broken setting is one line, exit 6."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from db.cli_support import CATALOGAN_ARGV, ExitCode

LONG_NAME = "acme-" + "x" * 59  # the longest name a tenant may have (64), far wider than a 40-column terminal


def catalogan(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `catalogan ARGS` with stdout and stderr as pipes (as `| grep` or a script sees it)."""
    return subprocess.run(
        [*CATALOGAN_ARGV, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment without any CATALOGAN_* variable, with a narrow terminal size, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOGAN_")}
    return {**env, "COLUMNS": "40", "CATALOGAN_DATA_DIR": str(tmp_path / "data"), **extra}


def test_piped_tables_are_tsv_and_never_truncated(tmp_path: Path) -> None:
    """Given a tenant with a 64-character name and a key, when `tenants ls` and `keys ls` are piped, then each is
    TSV with a header, the whole name is there (so `| grep` finds it), and --format table/json still work."""
    env = clean_env(tmp_path)
    assert catalogan(["db", "upgrade"], env, tmp_path).returncode == 0
    created = catalogan(["tenants", "create", LONG_NAME, "--with-key", "--json"], env, tmp_path)
    assert created.returncode == 0, created.stderr

    tenants = catalogan(["tenants", "ls"], env, tmp_path)
    header, *rows = tenants.stdout.splitlines()
    assert header.split("\t")[:2] == ["id", "name"]
    assert [row.split("\t")[1] for row in rows] == [LONG_NAME]
    keys = catalogan(["keys", "ls", "--tenant", LONG_NAME], env, tmp_path)
    assert keys.returncode == 0, keys.stderr
    key_header = keys.stdout.splitlines()[0].split("\t")
    assert all(key_header) and "prefix" in key_header

    table = catalogan(["tenants", "ls", "--format", "table"], env, tmp_path)
    assert LONG_NAME in table.stdout and "…" not in table.stdout
    as_json = json.loads(catalogan(["tenants", "ls", "--format", "json"], env, tmp_path).stdout)
    assert [tenant["name"] for tenant in as_json] == [LONG_NAME]


@pytest.mark.parametrize(
    ("args", "variable", "value"),
    [
        (["db", "current"], "CATALOGAN_DATABASE_POOL_SIZE", "abc"),  # db.settings
        (["beat", "--once"], "CATALOGAN_REAPER_INTERVAL_SECONDS", "soon"),  # db.pipeline_settings
    ],
)
def test_a_broken_setting_is_one_line_naming_the_variable_and_exit_6(
    tmp_path: Path, args: list[str], variable: str, value: str
) -> None:
    """Given a malformed CATALOGAN_* variable, when a command that reads it runs, then stderr is one line that
    names the variable and the exit code is 6 (configuration), not a pydantic dump with exit 2."""
    result = catalogan(args, clean_env(tmp_path, **{variable: value}), tmp_path)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {variable}:"), result.stderr
    assert value not in lines[0]  # values are never echoed: a broken setting may hold a secret


def test_piped_workers_is_one_table_and_the_queue_depths_are_their_own(tmp_path: Path) -> None:
    """Given the embedded stack with no worker, when `catalogan workers` is piped, then stdout is one TSV table
    (one header line): before, the queue-depth table followed it, glued on with a second header. `--queues`
    prints the depths as their own table, and the terminal table still shows both."""
    env = clean_env(tmp_path)
    assert catalogan(["db", "upgrade"], env, tmp_path).returncode == 0
    piped = catalogan(["workers"], env, tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.splitlines() == ["worker\tping\tchunks\tlease_until"]
    queues = catalogan(["workers", "--queues"], env, tmp_path)
    assert queues.returncode == 0, queues.stderr
    assert queues.stdout.splitlines() == ["queue\tdepth", "interactive\t0", "bulk\t0", "backfill\t0"]
    table = catalogan(["workers", "--format", "table"], env, tmp_path).stdout
    assert "WORKER" in table and "QUEUE" in table and "backfill" in table


def test_beat_once_with_the_database_down_is_exit_5_in_one_error_line(tmp_path: Path) -> None:
    """Given a database URL nobody answers on, when `beat --once` runs, then each step logs one line, the
    command ends with one `Error:` line saying a service did not answer, exit 5, and no traceback: before,
    a traceback per step and exit 1, which means a bug."""
    env = clean_env(tmp_path, CATALOGAN_DATABASE_URL="postgresql://postgres@127.0.0.1:1/x")
    result = catalogan(["beat", "--once"], env, tmp_path)
    assert result.returncode == ExitCode.UNAVAILABLE, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: a service did not answer:"), result.stderr
    for step in ("reaper", "webhooks", "retention"):
        assert f"periodic step {step} failed: OperationalError:" in result.stderr
