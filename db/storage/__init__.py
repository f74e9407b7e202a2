"""The object store: one small interface (`ObjectStore`), three backends, picked by URL.

    s3://bucket/prefix   S3Store     boto3; AWS, MinIO, SeaweedFS (endpoint from AWS_ENDPOINT_URL)
    file:///abs/path     LocalStore  a local folder, atomic writes (the embedded default)
    memory://            MemoryStore a dict, for unit tests (each call gets a fresh, empty store)

Every key passes `validate_key` first; every backend raises only `db.errors` storage errors.
"""

from __future__ import annotations

from db.errors import StorageError
from db.storage.base import ObjectInfo, ObjectStore, PresignedUrl
from db.storage.keys import InvalidKeyError, validate_key, validate_key_segment, validate_prefix
from db.storage.local import LocalStore, path_from_file_url
from db.storage.memory import MemoryStore

__all__ = [
    "InvalidKeyError",
    "LocalStore",
    "MemoryStore",
    "ObjectInfo",
    "ObjectStore",
    "PresignedUrl",
    "open_store",
    "validate_key",
    "validate_key_segment",
    "validate_prefix",
]


def open_store(url: str) -> ObjectStore:
    """Build the object store a URL names (`s3://`, `file://` or `memory://`); raise `StorageError` otherwise."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "s3":
        # Imported here so that processes that never touch S3 do not pay for importing boto3.
        from db.storage.s3 import S3Store

        return S3Store(url)
    if scheme == "file":
        return LocalStore(path_from_file_url(url))
    if scheme == "memory":
        return MemoryStore(url)
    raise StorageError(
        f"{url!r}: unsupported object-store URL; use s3://bucket/prefix, file:///path or memory://"
    )
