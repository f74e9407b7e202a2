"""S3 object store (`s3://bucket/prefix`) via boto3 (PUTs and bulk reads via obstore, `db/storage/s3_put.py`):
AWS, MinIO, SeaweedFS.

Credentials, region and endpoint come the standard AWS way (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`, profiles, instance roles). With a custom endpoint,
buckets are addressed path-style (`http://host:port/bucket/key`), which every S3-compatible server accepts.

boto3/botocore exceptions never leave this module: they become `ObjectNotFoundError` (no such key),
`TransientStorageError` (throttling, 5xx, timeouts, refused connections — worth retrying) or
`StorageError` (everything else: no such bucket, access denied, missing credentials).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, BinaryIO

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ResponseStreamingError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from db.errors import ObjectNotFoundError, StorageError, TransientStorageError
from db.storage.base import PUT_FILE_PIECE_BYTES, ObjectInfo, ObjectStore, PresignedUrl, threaded_gets
from db.storage.keys import validate_key, validate_prefix
from db.storage.presign import check_expiry, presign_client
from db.storage.s3_put import ObstoreFastPath, put_client_choice
from db.urls import split_url

# Total attempts per call, first one included (botocore "standard" mode backs off exponentially with jitter).
S3_MAX_ATTEMPTS = 5
S3_CONNECT_TIMEOUT_SECONDS = 5
S3_READ_TIMEOUT_SECONDS = 60
S3_MAX_POOL_CONNECTIONS = 32  # workers upload from a thread pool; boto3's default of 10 would queue them
S3_DELETE_MAX_KEYS = 1000  # keys one DeleteObjects request may name (S3's own limit)
S3_MAX_PARTS = 10_000  # parts one multipart upload may have (S3's own limit)

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
    }
)
_TRANSIENT_BOTO = (BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError)


def custom_endpoint() -> str | None:
    """The S3 endpoint from the environment (`AWS_ENDPOINT_URL_S3` wins over `AWS_ENDPOINT_URL`), if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def client_config(*, path_style: bool) -> Config:
    """The botocore config every catalogan S3 client uses: standard retries, bounded timeouts, SigV4."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
        connect_timeout=S3_CONNECT_TIMEOUT_SECONDS,
        read_timeout=S3_READ_TIMEOUT_SECONDS,
        max_pool_connections=S3_MAX_POOL_CONNECTIONS,
        signature_version="s3v4",
        s3={"addressing_style": "path" if path_style else "auto"},
    )


_loader_lock = threading.Lock()
_shared_loader: botocore.loaders.Loader | None = None


def _data_loader() -> botocore.loaders.Loader:
    # Parsing botocore's service models is most of the cost of a new client (~0.2 s); share the parsed data
    # between clients, but give each client a session of its own so credentials are resolved afresh.
    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = botocore.loaders.create_loader()
        return _shared_loader


def make_s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client configured the catalogan way (endpoint from the environment unless given).

    The region is `AWS_REGION` when set: botocore itself reads only `AWS_DEFAULT_REGION` and the profile, while
    the AWS CLI v2, the other SDKs and container platforms set `AWS_REGION`; without it, botocore's own chain.
    """
    endpoint = endpoint_url or custom_endpoint()
    core = botocore.session.get_session()
    core.register_component("data_loader", _data_loader())
    return boto3.session.Session(botocore_session=core).client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION") or None,
        config=client_config(path_style=endpoint is not None),
    )


def translate_error(exc: Exception, what: str) -> StorageError:
    """The project error for a boto3/botocore exception raised while doing `what` (e.g. "get s3://b/k")."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{what}: {code or status} {error.get('Message', '')}".rstrip()
        if code in _NOT_FOUND_CODES:
            return ObjectNotFoundError(message)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStorageError(message)
        return StorageError(message)
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{what}: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if isinstance(exc, _TRANSIENT_BOTO):
        return TransientStorageError(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


@contextmanager
def _boundary(what: str) -> Iterator[None]:
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise translate_error(exc, what) from exc


def _delete_error(errors: Sequence[dict[str, Any]], what: str, strip: int) -> StorageError:
    """The error of a DeleteObjects answer that names keys it could not delete: transient when every failure
    is (the whole call can be retried; deleting again what was deleted is harmless)."""
    first = errors[0]
    code = str(first.get("Code", ""))
    message = (
        f"{what}: {len(errors)} not deleted, e.g. {str(first.get('Key', ''))[strip:]!r}: "
        f"{code} {first.get('Message', '')}".rstrip()
    )
    if all(str(error.get("Code", "")) in _TRANSIENT_CODES for error in errors):
        return TransientStorageError(message)
    return StorageError(message)


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split `s3://bucket/prefix` into (bucket, prefix); the prefix is "" or a valid key without a trailing /."""
    parts = split_url(url, error=StorageError)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError(f"{url!r}: expected s3://bucket or s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise StorageError(f"{url!r}: an s3:// URL takes no query or fragment")
    prefix = parts.path.strip("/")
    if prefix:
        validate_key(prefix)
    return parts.netloc, prefix


class S3Store(ObjectStore):
    """Objects in one S3 bucket under an optional key prefix."""

    piece_bytes = PUT_FILE_PIECE_BYTES  # `put_file`: one PUT up to this size, else parts of this size

    def __init__(self, url: str, *, client: Any | None = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.client = client if client is not None else make_s3_client()
        # PUTs and bulk reads through obstore (GIL-free, a fraction of boto3's CPU: db/storage/s3_put.py),
        # unless a client was injected or CATALOGAN_S3_PUT_CLIENT=boto3.
        self._fast: ObstoreFastPath | None = None
        if client is None and put_client_choice() == "obstore":
            self._fast = ObstoreFastPath(
                self.bucket,
                self.client,
                custom_endpoint=custom_endpoint(),
                max_attempts=S3_MAX_ATTEMPTS,
                connect_timeout_seconds=S3_CONNECT_TIMEOUT_SECONDS,
                read_timeout_seconds=S3_READ_TIMEOUT_SECONDS,
            )

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Upload `data` in one PUT (S3 makes it visible atomically)."""
        full = self._full(key)
        if self._fast is not None:
            self._fast.put(full, data, content_type=content_type, what=f"put {self.uri(key)}")
            return
        with _boundary(f"put {self.uri(key)}"):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type)

    def put_file(self, key: str, file: BinaryIO, *, content_type: str = "application/octet-stream") -> None:
        """Upload `file` (from its start): in one PUT when it is at most `piece_bytes`, else as a multipart
        upload of `piece_bytes` parts (more when 10,000 of them would not hold it), read one part at a time.
        S3 makes the object visible when the upload completes; a failed upload is aborted (its parts go)."""
        size = file.seek(0, os.SEEK_END)
        file.seek(0)
        if size <= self.piece_bytes:
            self.put(key, file.read(), content_type=content_type)
            return
        full = self._full(key)
        what = f"put {self.uri(key)}"
        part_bytes = max(self.piece_bytes, -(-size // S3_MAX_PARTS))
        with _boundary(what):
            upload = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, ContentType=content_type
            )
        upload_id = upload["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            while piece := file.read(part_bytes):
                number = len(parts) + 1
                with _boundary(f"{what} (part {number})"):
                    answer = self.client.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=piece
                    )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            with _boundary(what):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            with suppress(BotoCoreError, ClientError):  # the upload's own error is the one to raise
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise

    def get(self, key: str) -> bytes:
        """Download the object; raise `ObjectNotFoundError` when there is none."""
        full = self._full(key)
        with _boundary(f"get {self.uri(key)}"):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            with response["Body"] as body:
                return bytes(body.read())

    def _get_one(self, key: str) -> bytes:
        if self._fast is None:
            return self.get(key)
        return self._fast.get(self._full(key), what=f"get {self.uri(key)}")

    def get_many(self, keys: Sequence[str], *, in_flight: int = 8) -> Iterator[tuple[str, bytes]]:
        """As `ObjectStore.get_many`, through obstore when it carries PUTs (a seventh of boto3's CPU per GET)."""
        yield from threaded_gets(self._get_one, keys, in_flight)

    def iter_chunks(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """One GET whose body is read `chunk_bytes` at a time; `ObjectNotFoundError` when there is none."""
        full = self._full(key)
        with _boundary(f"get {self.uri(key)}"):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            with response["Body"] as body:
                while piece := body.read(chunk_bytes):
                    yield piece

    def exists(self, key: str) -> bool:
        """True when a HEAD on the key succeeds."""
        full = self._full(key)
        try:
            with _boundary(f"head {self.uri(key)}"):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        """The object's size in bytes from a HEAD (nothing is downloaded); `ObjectNotFoundError` when absent."""
        full = self._full(key)
        with _boundary(f"head {self.uri(key)}"):
            return int(self.client.head_object(Bucket=self.bucket, Key=full)["ContentLength"])

    def delete(self, key: str) -> None:
        """Delete the object (S3 treats a missing key as success)."""
        full = self._full(key)
        with _boundary(f"delete {self.uri(key)}"):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete the objects with one DeleteObjects request per `S3_DELETE_MAX_KEYS` keys (missing keys are
        deleted as far as S3 is concerned). Every key is checked before any request; a key S3 could not delete
        is raised as the error of its code (`TransientStorageError` for SlowDown, InternalError, ...).

        Through boto3 also when obstore carries PUTs: deletes stay on the portable path (db/storage/s3_put.py)."""
        full = [self._full(key) for key in keys]
        for start in range(0, len(full), S3_DELETE_MAX_KEYS):
            batch = full[start : start + S3_DELETE_MAX_KEYS]
            what = f"delete {len(batch)} objects under {self.url}"
            with _boundary(what):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = response.get("Errors") or []
            if errors:
                raise _delete_error(errors, what, len(self.prefix) + 1 if self.prefix else 0)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects under `prefix` page by page; S3 returns keys in UTF-8 byte (= key) order."""
        validate_prefix(prefix)
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        with _boundary(f"list {self.url}/{prefix}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][strip:], int(item["Size"]))

    def presign(self, key: str, *, expires_in_seconds: int) -> PresignedUrl:
        """A SigV4 presigned GET URL valid for `expires_in_seconds` (at most 7 days)."""
        full = self._full(key)
        expires_at = check_expiry(expires_in_seconds)
        with _boundary(f"presign {self.uri(key)}"):
            url = presign_client(self.client, make_s3_client).generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=expires_in_seconds
            )
        return PresignedUrl(str(url), expires_at)
