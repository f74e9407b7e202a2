"""Manifest rows made safe to open in a spreadsheet (OWASP's advice against CSV injection)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A spreadsheet reads a cell that starts with one of these as a formula (or, tab and CR, as the start of one).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` with every text value a spreadsheet would run as a formula prefixed by `'`, which it shows as text
    (OWASP's advice against CSV injection): a tenant's SKU such as `=HYPERLINK(...)` comes through as text.
    For writing manifest rows (`Client.manifest_rows`) to a CSV someone will open in a spreadsheet."""
    return {
        name: "'" + value if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value
        for name, value in row.items()
    }
