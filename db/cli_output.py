"""How CLI commands print (every command group: `scheduler/`, `models/`, `workers/` — hence in `db`, like
`db.cli_support`): an aligned table for a person at a terminal, TSV when stdout is a pipe or a file,
JSON for scripts (`--json` or `--format json`: one JSON document on stdout).

Nothing is ever truncated or wrapped: `catalogan tenants ls | grep acme` sees every character. TSV has one header
line and one line per row; tabs and newlines inside a value become spaces. Plain Python only (no rich), so the
light client install (`catalogan jobs ...`) prints the same way.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import click

Format = Literal["table", "tsv", "json"]
FORMATS: tuple[Format, ...] = ("table", "tsv", "json")
FORMAT_KEY = "catalogan.output_format"  # where the chosen format waits in the click context's meta
F = TypeVar("F", bound=Callable[..., Any])


def default_format() -> Format:
    """`table` when stdout is a terminal, else `tsv`."""
    return "table" if sys.stdout.isatty() else "tsv"


def current_format() -> Format:
    """The format the running command was asked for (or the default for this stdout)."""
    ctx = click.get_current_context(silent=True)
    chosen = ctx.find_root().meta.get(FORMAT_KEY) if ctx is not None else None
    return chosen if chosen in FORMATS else default_format()


def json_option(func: F) -> F:
    """Add `--format table|tsv|json` and `--json` (= `--format json`); the command receives `as_json`.

    `--json` with `--format table` or `--format tsv` is a usage error (exit 2) naming both."""

    @click.option(
        "--format",
        "listing_format",  # not `output_format`: commands such as `jobs submit` have an --output-format
        type=click.Choice(FORMATS),
        default=None,
        help="Output format [default: table on a terminal, tsv when piped].",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON (same as --format json).")
    @functools.wraps(func)
    def wrapper(*args: Any, listing_format: Format | None, as_json: bool, **kwargs: Any) -> Any:
        if as_json and listing_format not in (None, "json"):
            # `--format tsv --json` printed JSON without a word: two answers to one question is bad usage.
            raise click.UsageError(
                f"--json and --format {listing_format} conflict: give one of them (--json = --format json)"
            )
        chosen: Format = "json" if as_json else listing_format or default_format()
        click.get_current_context().find_root().meta[FORMAT_KEY] = chosen
        return func(*args, as_json=chosen == "json", **kwargs)

    return wrapper  # type: ignore[return-value]


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def print_json(data: Any) -> None:
    """Print `data` as JSON (datetimes as ISO 8601)."""
    click.echo(json.dumps(data, default=_default, indent=2))


def _cell(value: Any, *, tsv: bool) -> str:
    if value is None:
        return "" if tsv else "-"
    if isinstance(value, dt.datetime):
        return value.isoformat() if tsv else value.strftime("%Y-%m-%d %H:%M:%S")
    if hasattr(value, "value"):
        value = value.value
    text = str(value)
    return " ".join(text.split()) if tsv else text.replace("\n", " ")


def format_tsv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as TSV: a header line, then one line per row (no quoting; tabs/newlines in values become spaces)."""
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(row.get(column), tsv=True) for column in columns) for row in rows]
    return "\n".join(lines) + "\n"


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, title: str | None = None
) -> str:
    """Rows as a left-aligned table, every column as wide as its widest cell (never truncated)."""
    cells = [[_cell(row.get(column), tsv=False) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    lines = [] if title is None else [title]
    lines.append(
        "  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True))
    )
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, title: str | None = None
) -> None:
    """Print rows in the command's format: an aligned table, TSV, or (with --format json) a JSON list."""
    fmt = current_format()
    if fmt == "json":
        print_json([{column: row.get(column) for column in columns} for row in rows])
    elif fmt == "tsv":
        click.echo(format_tsv(rows, columns), nl=False)
    else:
        click.echo(format_table(rows, columns, title=title), nl=False)


def print_rows(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, as_json: bool, title: str | None = None
) -> None:
    """`--json`: the rows as a JSON list (every field); otherwise a table or TSV of `columns`."""
    if as_json:
        print_json(list(rows))
    else:
        print_table(rows, columns, title=title)
