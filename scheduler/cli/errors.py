"""The one place where exceptions become CLI exit codes and one-line messages."""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from db.errors import (
    CataloganError,
    ConfigError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    StorageError,
)
from scheduler.errors import ApiError, TransportError

F = TypeVar("F", bound=Callable[..., Any])


class ExitCode(enum.IntEnum):
    """Exit codes of `catalogan`; documented in docs/cli.md."""

    OK = 0
    ERROR = 1  # an unexpected failure (a bug): the traceback is printed
    USAGE = 2  # bad arguments or input (click's own code)
    NOT_FOUND = 3
    CONFLICT = 4  # invalid transition, duplicate, gate refused
    UNAVAILABLE = 5  # a service (database, broker, object store) did not answer
    CONFIG = 6
    JOB_FAILED = 7  # the job ran but did not succeed
    NOT_VERIFIED = 8  # `verify`: the file does not match its provenance, or carries none


EXIT_CODES: list[tuple[type[BaseException], ExitCode]] = [
    (TransportError, ExitCode.UNAVAILABLE),
    (NotFoundError, ExitCode.NOT_FOUND),
    (ConflictError, ExitCode.CONFLICT),
    (InvalidTransitionError, ExitCode.CONFLICT),
    (ConfigError, ExitCode.CONFIG),
    (StorageError, ExitCode.UNAVAILABLE),
    (ValueError, ExitCode.USAGE),
    (CataloganError, ExitCode.ERROR),
]


# What an API answer means for a CLI command built on the SDK (`catalogan jobs ...`).
API_STATUS_EXIT_CODES: dict[int, ExitCode] = {
    401: ExitCode.CONFIG,
    404: ExitCode.NOT_FOUND,
    409: ExitCode.CONFLICT,
    413: ExitCode.USAGE,
    422: ExitCode.USAGE,
    429: ExitCode.UNAVAILABLE,
}


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code for an exception raised by a command."""
    if isinstance(exc, ApiError):
        return API_STATUS_EXIT_CODES.get(
            exc.status, ExitCode.UNAVAILABLE if exc.status >= 500 else ExitCode.ERROR
        )
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return ExitCode.ERROR


def one_line_errors(func: F) -> F:
    """Turn project errors raised by a command into `Error: ...` on stderr and a named exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except (CataloganError, ValueError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exit_code_for(exc))
        except Exception as exc:
            # SQLAlchemy / redis connection failures: a service is down, not a bug.
            name = type(exc).__name__
            if name in {"OperationalError", "ConnectionError", "InterfaceError"}:
                click.echo(f"Error: a service did not answer: {str(exc).splitlines()[0]}", err=True)
                sys.exit(ExitCode.UNAVAILABLE)
            raise

    return wrapper  # type: ignore[return-value]
