"""Assertions on a `click.testing.Result` shared by the CLI bad-input tests."""

from __future__ import annotations

from click.testing import Result


def one_error_line(result: Result) -> str:
    """The one `Error: ...` line of a command that refused its input: no traceback, no second error line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]
