"""Where API keys and console sessions are checked: threads of their own, and a cap on failures per address.

A key that is not a tenant's costs the caller nothing and the API a thread and a pooled connection for its
lookup. Checked on the shared thread pool, a flood of made-up keys took the threads every sync route needs
(and the connections behind them) from every tenant. So:

- each check runs on `CATALOGAN_AUTH_THREADS` threads of its own (`AuthGate.run`); a request waiting for one
  waits on the event loop, holding no thread and no connection;
- a client address with `CATALOGAN_AUTH_FAILURES_PER_WINDOW` failed checks in the current window of
  `CATALOGAN_RATE_LIMIT_WINDOW_SECONDS` is answered 429 with `Retry-After` before any lookup (no thread, no
  SQL). IPv6 clients are counted per /64 (one host usually holds a whole /64); at most
  `AUTH_TRACKED_ADDRESSES` addresses are counted apart in a window, the rest together.

Counted in this process (each API process has its own), on the event loop: the count is a dict lookup, not a
Redis round trip, so refusing costs less than the lookup it saves. Behind a reverse proxy, uvicorn takes the
client's address from `X-Forwarded-For` when the proxy is in `FORWARDED_ALLOW_IPS` (docs/configuration.md);
without that, every client counts as the proxy.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import anyio

from db.errors import AuthenticationError
from scheduler.api.limits import LoopThreads
from scheduler.errors import RateLimitedError

T = TypeVar("T")

AUTH_TRACKED_ADDRESSES = 65_536  # addresses counted apart in one window; the others share one count
OTHER_ADDRESSES = "(other addresses)"


def address_key(host: str | None) -> str:
    """What failures are counted under for a client host: an IPv4 address, an IPv6 /64, or the name itself."""
    if not host:
        return "(unknown)"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:255]  # a Unix socket path or a test client's name
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class FailedChecks:
    """Failed checks per address in fixed windows, counted in this process."""

    def __init__(self, limit: int, window_seconds: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._window_start = -math.inf
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _current(self) -> float:
        """The current window's start (a new window forgets the last one's counts); call with the lock held."""
        now = self._clock()
        start = now - (now % self.window_seconds)
        if start != self._window_start:
            self._window_start = start
            self._counts = {}
        return start

    def refuse_if_over(self, address: str) -> None:
        """Raise `RateLimitedError` when `address` has used up its failures in this window."""
        with self._lock:
            start = self._current()
            count = self._counts.get(self._bucket(address), 0)
        if count >= self.limit:
            retry_after = max(1, math.ceil(start + self.window_seconds - self._clock()))
            raise RateLimitedError(
                f"{self.limit} failed authentications from this address in {self.window_seconds} s: "
                f"try again in {retry_after} s",
                retry_after_seconds=retry_after,
            )

    def count(self, address: str) -> None:
        """Count one failed check of `address`."""
        with self._lock:
            self._current()
            bucket = self._bucket(address)
            self._counts[bucket] = self._counts.get(bucket, 0) + 1

    def _bucket(self, address: str) -> str:
        """Where `address` is counted: its own count, or the shared one once the window tracks enough."""
        if address in self._counts or len(self._counts) < AUTH_TRACKED_ADDRESSES:
            return address
        return OTHER_ADDRESSES


class AuthGate:
    """Runs authentication checks on threads of their own, after the caller's address has failures left."""

    def __init__(
        self,
        *,
        threads: int,
        failures_per_window: int,
        window_seconds: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threads = LoopThreads("auth", threads)
        self.failures = FailedChecks(failures_per_window, window_seconds, clock)

    async def run(
        self,
        host: str | None,
        check: Callable[[], T],
        *,
        failures: tuple[type[BaseException], ...] = (AuthenticationError,),
    ) -> T:
        """`check()` on an authentication thread, for a client at `host`; a `failures` exception it raises is
        counted against the address. `RateLimitedError` (429) first when the address has none left."""
        address = address_key(host)
        self.failures.refuse_if_over(address)
        try:
            return await anyio.to_thread.run_sync(check, limiter=self.threads.limiter())
        except failures:
            self.failures.count(address)
            raise
