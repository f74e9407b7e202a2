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
