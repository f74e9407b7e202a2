"""Opaque pagination cursors: the sort key of the last row of a page, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from scheduler.errors import RequestValidationError

MAX_CURSOR_CHARS = 512
# The integers a cursor may carry: a 64-bit signed column's (every integer sort key is one or narrower).
MIN_CURSOR_INT, MAX_CURSOR_INT = -(2**63), 2**63 - 1


def encode_cursor(*values: Any) -> str:
    """A cursor carrying `values` (the last row's sort key)."""
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, arity: int) -> list[Any]:
    """The values in `cursor`; raise `RequestValidationError` (422 naming `cursor`) for anything else."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise RequestValidationError(
            "cursor", "opaque_cursor", "cursor: not a cursor this API issued"
        ) from exc
    if not isinstance(values, list) or len(values) != arity or any("\x00" in str(v) for v in values):
        raise RequestValidationError("cursor", "opaque_cursor", "cursor: not a cursor this API issued")
    if any(isinstance(v, int) and not MIN_CURSOR_INT <= v <= MAX_CURSOR_INT for v in values):
        # A hand-made cursor's 10**20 would reach the database: OverflowError on SQLite, DataError on PostgreSQL.
        raise RequestValidationError("cursor", "opaque_cursor", "cursor: not a cursor this API issued")
    return values
