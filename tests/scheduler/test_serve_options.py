"""`catalogan serve` refuses a bad --port, --workers or --log-level as a usage error, before uvicorn starts."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from db.cli_support import ExitCode
from scheduler.cli.root import cli


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every `uvicorn.run` call; none starts a server."""
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda _app, **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--port", "99999"], "--port"),
        (["--port", "65536"], "--port"),
        (["--port", "0"], "--port"),
        (["--port", "-1"], "--port"),
        (["--workers", "0"], "--workers"),
        (["--workers", "-2"], "--workers"),
        (["--log-level", "bogus"], "--log-level"),
    ],
)
def test_a_bad_option_is_a_usage_error_naming_it_and_nothing_starts(
    uvicorn_runs: list[dict[str, Any]], args: list[str], option: str
) -> None:
    # Given a bad value, when `catalogan serve` runs
    result = CliRunner().invoke(cli, ["serve", *args])
    # Then click's usage error names the option, exit 2, no traceback, and uvicorn was never called
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert uvicorn_runs == []


def test_good_options_reach_uvicorn(uvicorn_runs: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(
        cli, ["serve", "--port", "65535", "--workers", "2", "--log-level", "WARNING"], env={}
    )
    assert result.exit_code == 0, result.output
    assert len(uvicorn_runs) == 1
    assert uvicorn_runs[0]["port"] == 65535 and uvicorn_runs[0]["workers"] == 2
    assert uvicorn_runs[0]["log_level"] == "warning"  # uvicorn's names are lower case


def test_every_uvicorn_log_level_is_accepted(uvicorn_runs: list[dict[str, Any]]) -> None:
    from uvicorn.config import LOG_LEVELS

    for level in LOG_LEVELS:
        result = CliRunner().invoke(cli, ["serve", "--log-level", level])
        assert result.exit_code == 0, result.output
        assert uvicorn_runs[-1]["log_level"] == level
