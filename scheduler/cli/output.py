"""How CLI commands print: rich tables for people, `--json` for scripts (one JSON document on stdout)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

ID_COLUMNS = frozenset({"id", "job", "tenant", "worker"})

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def print_json(data: Any) -> None:
    """Print `data` as JSON (datetimes as ISO 8601)."""
    click.echo(json.dumps(data, default=_default, indent=2))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if hasattr(value, "value"):
        return str(value.value)
    return str(value)


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, title: str | None = None
) -> None:
    """Print rows as a rich table with the given columns (a row without a column shows `-`)."""
    table = Table(title=title, header_style="bold")
    for column in columns:
        # Ids are copied into the next command: never wrap or truncate them.
        table.add_column(column, no_wrap=column in ID_COLUMNS, min_width=32 if column in ID_COLUMNS else None)
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    Console().print(table)


def print_rows(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, as_json: bool, title: str | None = None
) -> None:
    """`--json`: the rows as a JSON list; otherwise a table."""
    if as_json:
        print_json(list(rows))
    else:
        print_table(rows, columns, title=title)
