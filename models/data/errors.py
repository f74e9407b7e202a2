"""Errors raised while reading training data."""

from __future__ import annotations

from db.errors import CataloganError


class DataError(CataloganError, ValueError):
    """Raised when training data is unreadable or inconsistent; the message names the file."""
