"""The object-store interface. Three implementations: S3 (boto3), a local folder, and in-memory.

Keys are relative, `/`-separated, and validated by `validate_key` before any backend sees them.
Every backend raises only `db.errors` storage errors.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from db.storage.keys import validate_key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a listing returns for one object."""

    key: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class PresignedUrl:
    """A time-limited GET URL for one object."""

    url: str
    expires_at: dt.datetime


PUT_FILE_PIECE_BYTES = 16 << 20  # what `put_file` holds at once (S3: one part of a multipart upload)


class ObjectStore(abc.ABC):
    """A flat key → bytes store rooted at a prefix (an S3 bucket/prefix, a folder, a dict)."""

    url: str  # the URL the store was built from, e.g. s3://bucket/prefix

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key`, replacing any object there; readers never see a partial object."""

    def put_file(self, key: str, file: BinaryIO, *, content_type: str = "application/octet-stream") -> None:
        """Store the bytes of `file` (a seekable binary file, read from its start) under `key`, replacing any
        object there; readers never see a partial object.

        For objects too large to hold (a million-image job's manifests): the S3 and local stores read
        `PUT_FILE_PIECE_BYTES` at a time (S3: a multipart upload above `S3_SINGLE_PUT_MAX_BYTES`). This
        default reads the whole file (the in-memory store holds it anyway)."""
        file.seek(0)
        self.put(key, file.read(), content_type=content_type)

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise `ObjectNotFoundError` when there is none."""

    def get_many(self, keys: Sequence[str], *, in_flight: int = 8) -> Iterator[tuple[str, bytes]]:
        """Yield `(key, bytes)` for each key, in order, with up to `in_flight` reads running at once.

        For bulk copies (a job's export): one read at a time is bound by the round trip. At most
        `in_flight` objects are held; the first error (`ObjectNotFoundError`, ...) is raised in order."""
        yield from threaded_gets(self.get, keys, in_flight)

    def iter_chunks(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Yield the object's bytes in pieces of at most `chunk_bytes` (`ObjectNotFoundError` when absent).

        This default holds the whole object (the in-memory store has it anyway); the S3 and local stores
        read one piece at a time, so a caller that streams holds at most `chunk_bytes`."""
        data = self.get(key)
        for start in range(0, len(data), chunk_bytes):
            yield data[start : start + chunk_bytes]

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """True when an object is stored under `key`."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under `key`; deleting a missing key is not an error."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove the objects under `keys`; missing keys are not an error. Every key is checked
        (`InvalidKeyError`) before any object is removed.

        For bulk deletions (a job's folder): S3 sends one DeleteObjects request per 1,000 keys instead of one
        request per key. This default deletes one key at a time (a folder, a dict: no round trip to save)."""
        for key in keys:
            validate_key(key)
        for key in keys:
            self.delete(key)

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose keys start with `prefix`, in key order."""

    @abc.abstractmethod
    def presign(self, key: str, *, expires_in_seconds: int) -> PresignedUrl:
        """A GET URL valid for `expires_in_seconds` (a `file://` URI for local folders)."""

    def uri(self, key: str) -> str:
        """The full URI of `key` in this store (e.g. `s3://bucket/prefix/key`)."""
        return f"{self.url.rstrip('/')}/{key}"


def threaded_gets(
    get: Callable[[str], bytes], keys: Sequence[str], in_flight: int
) -> Iterator[tuple[str, bytes]]:
    """`(key, get(key))` in key order from a pool of `in_flight` threads, a sliding window of futures (so at
    most `in_flight` results are held however many keys there are)."""
    if in_flight < 1:
        raise ValueError(f"in_flight: {in_flight} must be at least 1")
    if not keys:
        return
    with ThreadPoolExecutor(max_workers=min(in_flight, len(keys))) as pool:
        window: deque[tuple[str, Future[bytes]]] = deque()
        try:
            for key in keys:
                window.append((key, pool.submit(get, key)))
                if len(window) >= in_flight:
                    done_key, future = window.popleft()
                    yield done_key, future.result()
            while window:
                done_key, future = window.popleft()
                yield done_key, future.result()
        finally:
            for _, future in window:  # an error or an abandoned generator: nothing more is started
                future.cancel()
