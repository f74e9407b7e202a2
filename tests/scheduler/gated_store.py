"""`GatedS3Store`: the real S3 store (SeaweedFS) that counts its calls and can hold some of them at a gate.

For the concurrency tests of the API and the console: how many reads of one kind ran at once, and what a
request of another tenant sees while they wait. Nothing is faked: every call reaches SeaweedFS once the gate
lets it through.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from db.storage.base import PresignedUrl
from db.storage.s3 import S3Store

GATE_TIMEOUT_SECONDS = 60  # a held call goes on by itself after this long (a failing test never hangs)


class GatedS3Store(S3Store):
    """An S3Store noting, per method, its calls and the most that ran at once (under `"<method> held"` too for
    the calls on keys under the held prefix).

    `hold(prefix)` makes `get` and `exists` calls on keys under `prefix` wait until `release()`, and
    `iter_chunks` on them hand out their first piece and then wait. `delay_seconds` adds a pause to each `exists`
    (the readiness probe). `on_presign` runs at each presign (to note what the request holds then)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: Counter[str] = Counter()
        self.most_at_once: Counter[str] = Counter()
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._held_prefix: str | None = None
        self._gate = threading.Event()
        self._gate.set()
        self.delay_seconds = 0.0
        self.on_presign: Callable[[], None] | None = None

    def hold(self, prefix: str) -> None:
        """Hold reads of keys under `prefix` at the gate until `release()`."""
        self._held_prefix = prefix
        self._gate.clear()

    def release(self) -> None:
        """Let every held read go on (and those to come)."""
        self._gate.set()

    def running(self, name: str) -> int:
        """Calls of `name` in progress now."""
        with self._lock:
            return self._running[name]

    def _names(self, name: str, key: str) -> list[str]:
        held = self._held_prefix is not None and key.startswith(self._held_prefix)
        return [name, f"{name} held"] if held else [name]

    def _enter(self, name: str, key: str) -> None:
        with self._lock:
            for counted in self._names(name, key):
                self.calls[counted] += 1
                self._running[counted] += 1
                self.most_at_once[counted] = max(self.most_at_once[counted], self._running[counted])

    def _leave(self, name: str, key: str) -> None:
        with self._lock:
            for counted in self._names(name, key):
                self._running[counted] -= 1

    def _wait_if_held(self, key: str) -> None:
        if self._held_prefix is not None and key.startswith(self._held_prefix):
            self._gate.wait(GATE_TIMEOUT_SECONDS)

    def get(self, key: str) -> bytes:
        """The object's bytes, once the gate lets this key through."""
        self._enter("get", key)
        try:
            self._wait_if_held(key)
            return super().get(key)
        finally:
            self._leave("get", key)

    def exists(self, key: str) -> bool:
        """A HEAD, after `delay_seconds` and the gate."""
        self._enter("exists", key)
        try:
            time.sleep(self.delay_seconds)
            self._wait_if_held(key)
            return super().exists(key)
        finally:
            self._leave("exists", key)

    def iter_chunks(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The object's pieces; under a held prefix, the pieces after the first wait for the gate."""
        self._enter("iter_chunks", key)
        try:
            for number, piece in enumerate(super().iter_chunks(key, chunk_bytes)):
                if number:
                    self._wait_if_held(key)
                yield piece
        finally:
            self._leave("iter_chunks", key)

    def presign(self, key: str, *, expires_in_seconds: int) -> PresignedUrl:
        """A presigned URL, after `on_presign`."""
        if self.on_presign is not None:
            self.on_presign()
        return super().presign(key, expires_in_seconds=expires_in_seconds)
