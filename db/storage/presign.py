"""Expiry rules shared by every backend's `presign`."""

from __future__ import annotations

import datetime as dt

# SigV4 presigned URLs are valid for at most seven days; the other backends follow the same bound.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


def check_expiry(expires_in_seconds: int) -> dt.datetime:
    """Return when a URL issued now for `expires_in_seconds` expires; raise `ValueError` outside 1 s .. 7 days."""
    if isinstance(expires_in_seconds, bool) or not isinstance(expires_in_seconds, int):
        raise ValueError(f"expires_in_seconds must be an int, got {expires_in_seconds!r}")
    if not 1 <= expires_in_seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(
            f"expires_in_seconds={expires_in_seconds}: must be between 1 and {MAX_PRESIGN_SECONDS}"
        )
    return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=expires_in_seconds)
