"""CLI plumbing every command group shares: exit codes, one-line errors, the argv that runs `catalogan`.

It lives in `db`, the bottom layer, because the command groups live next to their code in every package —
`models/` (train, evaluate), `workers/` (worker, generate, verify) and `scheduler/` (the root and the admin
commands) — and `models`/`workers` must never import `scheduler`. Exceptions become exit codes in this one
place:

    @click.command()
    @one_line_errors
    def promote(ref: str) -> None: ...          # NotFoundError → "Error: ..." on stderr, exit 3
"""

from __future__ import annotations

import enum
import math
import os
import re
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from db.errors import (
    CataloganError,
    ConfigError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ServiceUnavailableError,
    StorageError,
)

F = TypeVar("F", bound=Callable[..., Any])

# The command that runs `catalogan` with this interpreter, whether or not the console script is on PATH
# (`catalogan worker --gpus auto` starts one per GPU; `catalogan generate` starts a worker and beat).
CATALOGAN_ARGV: tuple[str, ...] = (sys.executable, "-c", "from scheduler.cli import main; main()")


class ExitCode(enum.IntEnum):
    """Exit codes of `catalogan`; documented in docs/cli.md."""

    OK = 0
    ERROR = 1  # an unexpected failure (a bug): the traceback is printed
    USAGE = 2  # bad arguments or input (click's own code)
    NOT_FOUND = 3
    CONFLICT = 4  # invalid transition, duplicate, gate refused
    UNAVAILABLE = 5  # a service (database, broker, object store, the API) did not answer
    CONFIG = 6
    JOB_FAILED = 7  # the job ran but did not succeed
    NOT_VERIFIED = 8  # `verify`: the file does not match its provenance, or carries none
    NOT_COMPARABLE = 9  # `verify --regenerate`: differs, but regenerated on another device kind or backend
    COMPLETED_WITH_FAILURES = 10  # the job finished, some images failed and the others were delivered
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell's own convention); SIGTERM, where handled, is 143


class Interrupted(KeyboardInterrupt):
    """Raised when a command is stopped (Ctrl-C, or SIGTERM where it turns the signal into this) and has one
    line to say what becomes of its work (`interrupted: job J goes on when the same command runs again`).

    A `KeyboardInterrupt`, so that no `except Exception` on the way up swallows it; `one_line_errors` prints
    the line and exits with `exit_code` (130 for Ctrl-C, 128 + the signal otherwise)."""

    def __init__(self, message: str = "interrupted", exit_code: int = ExitCode.INTERRUPTED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def job_exit_code(status: str) -> ExitCode:
    """The exit code of a command that followed a job to its end: 0 succeeded, 10 completed_with_failures
    (retry runs the failed images), 7 failed or cancelled."""
    if status == "succeeded":
        return ExitCode.OK
    if status == "completed_with_failures":
        return ExitCode.COMPLETED_WITH_FAILURES
    return ExitCode.JOB_FAILED


EXIT_CODES: list[tuple[type[BaseException], ExitCode]] = [
    (ServiceUnavailableError, ExitCode.UNAVAILABLE),
    (NotFoundError, ExitCode.NOT_FOUND),
    (ConflictError, ExitCode.CONFLICT),
    (InvalidTransitionError, ExitCode.CONFLICT),
    (ConfigError, ExitCode.CONFIG),
    (ValueError, ExitCode.USAGE),  # before StorageError: InvalidKeyError (a name breaking a key rule) is both
    (StorageError, ExitCode.UNAVAILABLE),
    (CataloganError, ExitCode.ERROR),
]


# What an API answer means for a CLI command built on the SDK (`catalogan jobs ...`): errors that carry the
# answer's `http_status` (the SDK's `ApiError`) map by it.
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
    status = getattr(exc, "http_status", None)
    if isinstance(exc, CataloganError) and isinstance(status, int):
        if 300 <= status < 400:  # a redirect: the API's URL is wrong (the API itself never redirects)
            return ExitCode.CONFIG
        return API_STATUS_EXIT_CODES.get(status, ExitCode.UNAVAILABLE if status >= 500 else ExitCode.ERROR)
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
        except KeyboardInterrupt as exc:
            # click would print a bare "Aborted!" and exit 1, which the exit table keeps for bugs.
            _exit_interrupted(exc)
        except click.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C in a prompt; a "no" stays click's
                _exit_interrupted(exc.__context__)
            raise
        except (click.ClickException, click.exceptions.Exit):
            raise
        except (CataloganError, ValueError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exit_code_for(exc))
        except Exception as exc:
            # SQLAlchemy / redis connection failures: a service is down, not a bug.
            name = type(exc).__name__
            first = str(exc).splitlines()[0] if str(exc) else name
            if name in {"OperationalError", "ProgrammingError"} and (
                "no such table" in first or ("relation" in first and "does not exist" in first)
            ):
                # A database without catalogan's tables is not an outage: say what to run.
                click.echo(
                    "Error: the database has no catalogan tables yet: run `catalogan db upgrade` "
                    f"(CATALOGAN_DATABASE_URL, else the data folder's SQLite file) ({first})",
                    err=True,
                )
                sys.exit(ExitCode.CONFIG)
            if name in {"OperationalError", "ConnectionError", "InterfaceError"}:
                click.echo(f"Error: a service did not answer: {str(exc).splitlines()[0]}", err=True)
                sys.exit(ExitCode.UNAVAILABLE)
            raise

    return wrapper  # type: ignore[return-value]


def _exit_interrupted(exc: KeyboardInterrupt) -> NoReturn:
    """One line on stderr (the command's own, when it raised `Interrupted`) and exit 130 (or its code)."""
    if isinstance(exc, Interrupted):
        click.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    click.echo("interrupted", err=True)
    sys.exit(ExitCode.INTERRUPTED)


def model_name_option(value: str) -> str:
    """A `--name` option's value when it is a valid model name; click's usage error (exit 2) naming the option
    and the rule otherwise, before the command does any work."""
    from db.model_versions import check_model_name

    try:
        return check_model_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _local_path(value: Path, param: click.Parameter) -> Path:
    # click has already made a Path of it, which folds `s3://b/k` into `s3:/b/k`
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", str(value)):
        raise click.BadParameter(f"{str(value)!r} looks like a URL: give a local path", param=param)
    return value


def output_folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot be (made) an output folder, or None when it can: it is a writable folder (a link to
    one counts), or its nearest existing ancestor is one. A symbolic link that leads nowhere or not to a folder
    (at `folder` or between it and that ancestor) and an existing file are refused: `mkdir` fails on them only
    later, after the command did its work. Creates nothing."""
    target = folder.absolute()
    existing = target
    while not os.path.lexists(existing) and existing != existing.parent:  # lexists: a dangling link exists
        existing = existing.parent
    if existing.is_symlink() and not existing.is_dir():
        link = os.readlink(existing)
        what = "leads nowhere" if not os.path.exists(existing) else "is not a folder"
        return f"{str(existing)!r} is a symbolic link to {link!r}, which {what}"
    if not existing.is_dir():
        return f"{str(existing)!r} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{str(existing)!r} is not a writable folder"
    return None


def output_folder(_ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A `--out`-style folder option: a local path that is a writable folder or can be made one (see
    `output_folder_problem`), checked before the command does its work and without creating anything: bad
    input changes nothing."""
    if value is None:
        return None
    _local_path(value, param)
    problem = output_folder_problem(value)
    if problem is not None:
        raise click.BadParameter(f"{str(value)!r} cannot be a folder: {problem}", param=param)
    return value


def output_file(_ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A `--out`-style file option: a local path whose folder exists and is writable, checked before the
    command does its work (the file itself is written at the end)."""
    if value is None:
        return None
    _local_path(value, param)
    folder = value.parent if str(value.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise click.BadParameter(
            f"{str(value)!r}: its folder {str(folder)!r} is not a writable folder", param=param
        )
    return value


class FiniteFloat(click.ParamType):
    """A float option that must be a finite number within bounds: click's usage error (exit 2) naming the
    option and the rule otherwise. (`click.FloatRange` lets `nan` through: every comparison with it is
    false, so `--interval nan` passed `min=0` and `--max-age nan` made any heartbeat fresh.)

    `min_open` excludes `min` itself (`> 0` rather than `>= 0`).
    """

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, *, min_open: bool = False) -> None:
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = float(click.FLOAT.convert(value, param, ctx))
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (number < self.min or (self.min_open and number == self.min)):
            self.fail(f"{number:g}: must be {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        if self.max is not None and number > self.max:
            self.fail(f"{number:g}: must be <= {self.max:g}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat(min={self.min}, max={self.max}, min_open={self.min_open})"


def creative_control_options(command: F) -> F:
    """The creative-control options `catalogan generate` and `catalogan jobs submit` share (docs/controlling.md):
    `--truncation`, `--variation-of` with `--strength` and `--count`, `--interpolate` with `--frames`. Their
    rules (ranges, which go together, JOB/INDEX or a file) are `db.control_options`'; here only the types."""
    options = (
        click.option(
            "--truncation",
            type=FiniteFloat(),
            default=None,
            metavar="PSI",
            help="Truncation ψ in 0.3..1.0: scales each latent (1.0 = off; lower = more typical, less varied). "
            "With --category or --variation-of (it replaces the source's ψ), not with --interpolate.",
        ),
        click.option(
            "--variation-of",
            default=None,
            metavar="JOB/INDEX|FILE",
            help="Images near this delivered image (its category and model version): JOB_ID/INDEX, or the path "
            "of the PNG a job delivered (its job and index are read from the file and its sha256 is checked "
            "against the recorded one; the image is not uploaded); with --strength and --count.",
        ),
        click.option(
            "--strength",
            type=FiniteFloat(),
            default=None,
            help="Variations (only with --variation-of): 0 = the source's pixels, 1 = unrelated.",
        ),
        click.option(
            "--count", type=int, default=None, help="Variations (only with --variation-of): how many images."
        ),
        click.option(
            "--interpolate",
            nargs=2,
            default=None,
            metavar="SOURCE SOURCE",
            help="Frames between two delivered images of one category and model version, each JOB_ID/INDEX or "
            "a delivered PNG's path; with --frames.",
        ),
        click.option(
            "--frames",
            type=int,
            default=None,
            help="Interpolation (only with --interpolate): frames, both ends included.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command
