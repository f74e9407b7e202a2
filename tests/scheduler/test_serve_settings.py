"""`catalogan serve` checks every setting the API reads before uvicorn starts its worker processes.

uvicorn builds the app in each of its processes: with `--workers 2` a setting the app refused there was a
traceback per child and a restart, forever, and the command never exited.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from db.cli_support import CATALOGAN_ARGV, ExitCode
from scheduler.cli.root import cli
from tests.scheduler.conftest import free_port


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every `uvicorn.run` call; none starts a server."""
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda _app, **kwargs: calls.append(kwargs))
    return calls


def test_production_with_embedded_defaults_and_two_workers_exits_6_at_once_with_one_line(
    tmp_path: Path,
) -> None:
    """Given CATALOGAN_ENVIRONMENT=production and no database, store or broker URL
    When `catalogan serve --workers 2` runs
    Then it exits 6 within 30 s with one `Error:` line naming CATALOGAN_ENVIRONMENT, and no traceback
    (before, each uvicorn child printed a traceback and was restarted, forever)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CATALOGAN_", "AWS_"))}
    env |= {"CATALOGAN_DATA_DIR": str(tmp_path), "CATALOGAN_ENVIRONMENT": "production"}
    command = [*CATALOGAN_ARGV, "serve", "--workers", "2", "--port", str(free_port())]
    try:
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`catalogan serve --workers 2` was still running after 30 s: {exc.stderr!r}")
    assert result.returncode == ExitCode.CONFIG, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: CATALOGAN_ENVIRONMENT=production: CATALOGAN_DATABASE_URL")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CATALOGAN_PUBLISH_WINDOW_CHUNKS", "0"),
        ("CATALOGAN_STORAGE_URL", "ftp://bucket/x"),
        ("CATALOGAN_BROKER_URL", "amqp://localhost"),
        ("CATALOGAN_CONSOLE_PAGE_SIZE", "0"),
    ],
)
def test_a_setting_only_the_app_or_a_request_reads_is_refused_before_uvicorn_starts(
    uvicorn_runs: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    variable: str,
    value: str,
) -> None:
    """Given a setting that the app reads in each uvicorn process (or per request: the publish window)
    When `catalogan serve --workers 2` runs
    Then it exits 6 with one line naming the variable, and uvicorn was never called."""
    for name in [name for name in os.environ if name.startswith("CATALOGAN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CATALOGAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(cli, ["serve", "--workers", "2"])
    assert result.exit_code == ExitCode.CONFIG, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {variable}: ")
    assert uvicorn_runs == []
