"""`catalogan serve` bounds what one uvicorn process takes on (outside audit, resource holding): at most
`CATALOGAN_API_LIMIT_CONCURRENCY` (512) connections and requests at once, more answered 503 at once; idle
keep-alive connections closed after 5 s; a stopping process waits at most 30 s for running requests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from db import migrate
from db.cli_support import ExitCode
from scheduler.cli.root import cli
from tests.cli_results import one_error_line
from tests.scheduler.conftest import free_port


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every `uvicorn.run` call; none starts a server."""
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda _app, **kwargs: calls.append(kwargs))
    return calls


def test_serve_bounds_concurrency_and_sets_timeouts_by_default(uvicorn_runs: list[dict[str, Any]]) -> None:
    """Given no setting, when `catalogan serve` starts uvicorn, then with a concurrency bound of 512, a 5 s
    keep-alive and a 30 s graceful shutdown. Before: no bound (uvicorn's default: none) and no shutdown bound."""
    result = CliRunner().invoke(cli, ["serve"], env={})
    assert result.exit_code == 0, result.output
    assert {name: uvicorn_runs[0][name] for name in ("limit_concurrency", "timeout_keep_alive")} == {
        "limit_concurrency": 512,
        "timeout_keep_alive": 5,
    }
    assert uvicorn_runs[0]["timeout_graceful_shutdown"] == 30


def test_the_bound_comes_from_the_setting_and_the_option_wins(uvicorn_runs: list[dict[str, Any]]) -> None:
    environment = {
        "CATALOGAN_API_LIMIT_CONCURRENCY": "64",
        "CATALOGAN_API_TIMEOUT_KEEP_ALIVE_SECONDS": "10",
        "CATALOGAN_API_TIMEOUT_GRACEFUL_SHUTDOWN_SECONDS": "5",
    }
    assert CliRunner().invoke(cli, ["serve"], env=environment).exit_code == 0
    assert CliRunner().invoke(cli, ["serve", "--limit-concurrency", "8"], env=environment).exit_code == 0
    assert [run["limit_concurrency"] for run in uvicorn_runs] == [64, 8]
    assert uvicorn_runs[0]["timeout_keep_alive"] == 10 and uvicorn_runs[0]["timeout_graceful_shutdown"] == 5


def test_a_bad_bound_is_refused_before_uvicorn_starts(uvicorn_runs: list[dict[str, Any]]) -> None:
    """A bound of 0 is a usage error naming the option (exit 2), or one line naming the variable (exit 6)."""
    option = CliRunner().invoke(cli, ["serve", "--limit-concurrency", "0"], env={})
    assert option.exit_code == ExitCode.USAGE and "Invalid value for '--limit-concurrency'" in option.output
    setting = CliRunner().invoke(cli, ["serve"], env={"CATALOGAN_API_LIMIT_CONCURRENCY": "0"})
    assert setting.exit_code == ExitCode.CONFIG, setting.output
    assert one_error_line(setting).startswith("Error: CATALOGAN_API_LIMIT_CONCURRENCY")
    assert uvicorn_runs == []


def test_the_help_documents_the_bound_and_its_setting() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    assert "--limit-concurrency" in text and "CATALOGAN_API_LIMIT_CONCURRENCY, 512" in text
    assert "CATALOGAN_API_TIMEOUT_KEEP_ALIVE_SECONDS" in text


@pytest.mark.slow
def test_connections_over_the_bound_are_answered_503_at_once(tmp_path: Path) -> None:
    """Given `catalogan serve --limit-concurrency 3` on the embedded stack, when 3 connections are open, then a
    request on a 4th is a 503 at once; once they close, the next request is served."""
    database = f"sqlite:///{tmp_path / 'catalogan.db'}"
    migrate.upgrade(database)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CATALOGAN_")},
        "CATALOGAN_DATA_DIR": str(tmp_path),
        "CATALOGAN_DATABASE_URL": database,
    }
    command = [sys.executable, "-c", "from scheduler.cli import main; main()", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--limit-concurrency", "3", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"{base}/healthz", timeout=2).status_code == 200
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                assert time.monotonic() < deadline, "catalogan serve did not start"
                time.sleep(0.2)
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        time.sleep(0.3)  # accepted by the server
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 503
        for connection in held:
            connection.close()
        time.sleep(0.3)
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        for connection in held:
            connection.close()
        process.terminate()
        assert process.wait(timeout=30) in (0, -15)
