"""An in-memory object store for unit tests: a dict behind a lock, with the same rules as the real ones."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from db.errors import ObjectNotFoundError
from db.storage.base import ObjectInfo, ObjectStore, PresignedUrl
from db.storage.keys import validate_key, validate_prefix
from db.storage.presign import check_expiry


class MemoryStore(ObjectStore):
    """Objects in a dict, private to this instance; safe to share between threads."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Store a copy of `data` under `key`."""
        validate_key(key)
        with self._lock:
            self._objects[key] = bytes(data)

    def get(self, key: str) -> bytes:
        """Return the bytes under `key`; raise `ObjectNotFoundError` when there are none."""
        validate_key(key)
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise ObjectNotFoundError(f"no object at {self.uri(key)}") from None

    def exists(self, key: str) -> bool:
        """True when `key` holds an object."""
        validate_key(key)
        with self._lock:
            return key in self._objects

    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""
        validate_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every key (missing ones are not an error); every key is checked before any is removed."""
        for key in keys:
            validate_key(key)
        with self._lock:
            for key in keys:
                self._objects.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects under `prefix` in key order (a snapshot taken at the call)."""
        validate_prefix(prefix)
        with self._lock:
            snapshot = [ObjectInfo(k, len(v)) for k, v in self._objects.items() if k.startswith(prefix)]
        yield from sorted(snapshot, key=lambda info: info.key)

    def presign(self, key: str, *, expires_in_seconds: int) -> PresignedUrl:
        """A `memory://` URL: it only names the object, nothing can download it."""
        validate_key(key)
        expires_at = check_expiry(expires_in_seconds)
        return PresignedUrl(self.uri(key), expires_at)
