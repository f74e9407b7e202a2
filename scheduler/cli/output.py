"""How the scheduler's commands print: `db.cli_output`, re-exported here for the command groups of `scheduler`."""

from __future__ import annotations

from db.cli_output import (
    FORMATS,
    Format,
    current_format,
    default_format,
    format_table,
    format_tsv,
    json_option,
    print_json,
    print_rows,
    print_table,
)

__all__ = [
    "FORMATS",
    "Format",
    "current_format",
    "default_format",
    "format_table",
    "format_tsv",
    "json_option",
    "print_json",
    "print_rows",
    "print_table",
]
