"""The S3 store's hot paths through obstore (Rust `object_store`): the GIL is released for the request.

Measured against boto3's thread pool on the same SeaweedFS (`bench/bench_upload.py`, figures in
docs/performance.md): about 3x the PUTs/s and under a sixth of the client CPU per PUT, and for small GETs
about 4x the GETs/s at a seventh of the CPU. Two paths go this way: `put`, and the bulk reads of
`S3Store.get_many` (a job's export); presigning, listing, single reads, HEAD and deletes stay on boto3 (the
portable path the design names), and so does everything of a store built around an injected boto3 client.

The connection settings are boto3's own, resolved once: the endpoint (`AWS_ENDPOINT_URL[_S3]`, path-style),
the region, and the credentials of the boto3 client's chain (env, profile, instance role), re-read through a
callback so that expiring credentials are refreshed. Retries mirror `S3_MAX_ATTEMPTS`; obstore's errors are
translated here (`raise ... from exc`), so callers see only `db.errors`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import TYPE_CHECKING, Any

from db.errors import ObjectNotFoundError, StorageError, TransientStorageError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config, S3Credential

# Off switch: CATALOGAN_S3_PUT_CLIENT=boto3 sends PUTs and bulk reads through boto3 as well.
PUT_CLIENT_ENV = "CATALOGAN_S3_PUT_CLIENT"
PUT_CLIENTS = ("obstore", "boto3")
# Credentials handed to obstore are re-read from boto3's chain after this long.
CREDENTIAL_REFRESH_SECONDS = 300
# In obstore's messages: the HTTP status of the last attempt, and the S3 error code and message in its body.
_STATUS = re.compile(r"status code: (\d{3})")
_S3_CODE = re.compile(r"<Code>([^<]*)</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


def put_client_choice() -> str:
    """`obstore` (the default) or `boto3`, from CATALOGAN_S3_PUT_CLIENT; a clear error for anything else."""
    choice = os.environ.get(PUT_CLIENT_ENV, "obstore").strip().lower() or "obstore"
    if choice not in PUT_CLIENTS:
        raise StorageError(f"{PUT_CLIENT_ENV}={choice!r}: must be one of {', '.join(PUT_CLIENTS)}")
    return choice


class ObstoreFastPath:
    """PUTs and GETs on one bucket through obstore, configured from a boto3 S3 client's endpoint, region and
    credentials."""

    def __init__(
        self,
        bucket: str,
        boto_client: Any,
        *,
        custom_endpoint: str | None,
        max_attempts: int,
        connect_timeout_seconds: float,
        read_timeout_seconds: float,
    ) -> None:
        from obstore.store import S3Store as ObstoreS3Store

        self._client = boto_client
        config: S3Config = {"region": boto_client.meta.region_name or "us-east-1"}
        client_options: ClientConfig = {
            "connect_timeout": dt.timedelta(seconds=connect_timeout_seconds),
            "timeout": dt.timedelta(seconds=read_timeout_seconds),
        }
        if custom_endpoint:
            config["endpoint"] = custom_endpoint
            config["virtual_hosted_style_request"] = False
            client_options["allow_http"] = custom_endpoint.startswith("http://")
        self._store = ObstoreS3Store(
            bucket,
            config=config,
            client_options=client_options,
            retry_config={
                "max_retries": max_attempts - 1,
                "retry_timeout": dt.timedelta(seconds=read_timeout_seconds),
            },
            credential_provider=self._credentials,
        )

    def _credentials(self) -> S3Credential:
        credentials = self._client._get_credentials()  # boto3's chain, as boto3's own CRT path reads it
        if credentials is None:
            raise StorageError("put: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        frozen = credentials.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": dt.datetime.now(dt.UTC) + dt.timedelta(seconds=CREDENTIAL_REFRESH_SECONDS),
        }

    def put(self, full_key: str, data: bytes, *, content_type: str, what: str) -> None:
        """One PUT of `data` (atomic on S3); obstore's errors become `TransientStorageError` / `StorageError`."""
        import obstore
        from obstore.exceptions import BaseError

        try:
            obstore.put(self._store, full_key, data, attributes={"Content-Type": content_type})
        except BaseError as exc:
            raise translate_obstore_error(exc, what) from exc

    def get(self, full_key: str, *, what: str) -> bytes:
        """One GET of a whole object; `ObjectNotFoundError` when there is none, else as `put` translates."""
        import obstore
        from obstore.exceptions import BaseError, NotFoundError

        try:
            return bytes(obstore.get(self._store, full_key).bytes())
        except (FileNotFoundError, NotFoundError) as exc:  # obstore raises the builtin one for a 404
            if "NoSuchBucket" in str(exc):
                raise translate_obstore_error(exc, what) from exc
            raise ObjectNotFoundError(f"{what}: NoSuchKey") from exc
        except BaseError as exc:
            raise translate_obstore_error(exc, what) from exc


def translate_obstore_error(exc: Exception, what: str) -> StorageError:
    """The project error for an obstore exception, once obstore's own retries are spent.

    Retryable (`TransientStorageError`): a 5xx or 429 answer (SlowDown, InternalError, ...) and a request
    that got no answer (refused, reset, timed out). Anything else — 403, 404 on a bucket, bad credentials —
    is a `StorageError`. The message keeps the S3 error code, as boto3's errors do.
    """
    from obstore.exceptions import GenericError

    text = str(exc)
    summary = " ".join(text.split("Debug source:", 1)[0].split())
    status_match = _STATUS.search(text)
    status = int(status_match.group(1)) if status_match else None
    code, message = _S3_CODE.search(text), _S3_MESSAGE.search(text)
    if code is not None:
        detail = f"{status} {code.group(1)} {message.group(1) if message else ''}".rstrip()
    else:
        detail = summary[:500]
    no_answer = (
        status is None and isinstance(exc, GenericError) and ("HTTP error" in text or "timed out" in text)
    )
    if no_answer or (status is not None and (status >= 500 or status == 429)):
        return TransientStorageError(f"{what}: {detail}")
    return StorageError(f"{what}: {detail}")
