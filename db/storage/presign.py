"""Expiry rules shared by every backend's `presign`, and the S3 client that signs for the public endpoint.

Services often reach S3 at an internal address (`http://minio:9000` in docker compose) that a user's browser or
ETL host cannot. SigV4 signs the host, so a URL cannot be rewritten after signing: with
`CATALOGAN_STORAGE_PUBLIC_ENDPOINT_URL` set, presigned URLs are made by a second client whose endpoint is the
public one (signing makes no request, so that address need not be reachable from the service).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any

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


@functools.cache
def public_endpoint_url() -> str:
    """`CATALOGAN_STORAGE_PUBLIC_ENDPOINT_URL`, read once per process ("" when unset)."""
    from db.settings import StorageSettings

    return StorageSettings().storage_public_endpoint_url


@functools.cache
def _public_client(endpoint_url: str, make_client: Callable[[str], Any]) -> Any:
    return make_client(endpoint_url)


def presign_client(client: Any, make_client: Callable[[str], Any]) -> Any:
    """The S3 client that should sign URLs: `client` itself, or one for the public endpoint when it is set,
    made (once per process) by `make_client` — the S3 store passes its own factory, so that this module does
    not import the S3 backend that imports it."""
    endpoint = public_endpoint_url()
    return _public_client(endpoint, make_client) if endpoint else client
