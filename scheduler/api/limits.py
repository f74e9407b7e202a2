"""Per-tenant limits of the API: request rate (429 + Retry-After) and request body size (413).

Quotas on new jobs (images per day, concurrent jobs) are checked by the one submit path: `db.quotas`.

The rate limiter is a fixed-window counter per tenant. With a Redis broker the counter lives in Redis
(`INCR` + `EXPIRE`), so every API replica shares it; without one it lives in this process.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Protocol

import anyio
from anyio.lowlevel import RunVar

from scheduler.errors import PayloadTooLargeError, RateLimitedError

# What a tenant over its concurrent-work limit is told to wait: about one short preview.
CONCURRENCY_RETRY_AFTER_SECONDS = 5


class LoopThreads:
    """A pool of `count` threads of its own per event loop (an `anyio.CapacityLimiter` to pass to
    `anyio.to_thread.run_sync`): work run with it never takes a thread of the shared pool, and a caller waiting
    for one waits on the event loop. Per loop, because a limiter belongs to the loop it was made on (tests run
    apps on several)."""

    def __init__(self, name: str, count: int) -> None:
        self.count = count
        self._limiters: RunVar[anyio.CapacityLimiter] = RunVar(f"catalogan_{name}_threads_{id(self)}")

    def limiter(self) -> anyio.CapacityLimiter:
        """This event loop's limiter."""
        limiter = self._limiters.get(None)
        if limiter is None:
            limiter = anyio.CapacityLimiter(self.count)
            self._limiters.set(limiter)
        return limiter


class RateLimiter(Protocol):
    """Counts requests per tenant per window."""

    def hit(self, tenant_id: str, *, limit: int, window_seconds: int) -> None:
        """Count one request; raise `RateLimitedError` when it is over `limit` in the current window."""


def _window(window_seconds: int, now: float) -> tuple[int, int]:
    start = int(now // window_seconds) * window_seconds
    return start, max(1, math.ceil(start + window_seconds - now))


class MemoryRateLimiter:
    """Fixed windows counted in this process (one API process, or tests)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def hit(self, tenant_id: str, *, limit: int, window_seconds: int) -> None:
        """Count one request; raise `RateLimitedError` when it is over `limit` in the current window."""
        start, retry_after = _window(window_seconds, self._clock())
        with self._lock:
            # Forget finished windows so the dict stays as small as the number of active tenants.
            for key in [k for k in self._counts if k[1] < start]:
                del self._counts[key]
            count = self._counts.get((tenant_id, start), 0) + 1
            self._counts[(tenant_id, start)] = count
        if count > limit:
            raise RateLimitedError(
                f"rate limit of {limit} requests per {window_seconds} s reached",
                retry_after_seconds=retry_after,
            )


class RedisRateLimiter:
    """Fixed windows counted in Redis, shared by every API replica."""

    def __init__(self, redis_client: Any, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis_client
        self._clock = clock

    def hit(self, tenant_id: str, *, limit: int, window_seconds: int) -> None:
        """Count one request; raise `RateLimitedError` when it is over `limit` in the current window."""
        start, retry_after = _window(window_seconds, self._clock())
        key = f"catalogan:ratelimit:{tenant_id}:{start}"
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, window_seconds + 5)
        count = int(pipe.execute()[0])
        if count > limit:
            raise RateLimitedError(
                f"rate limit of {limit} requests per {window_seconds} s reached",
                retry_after_seconds=retry_after,
            )


class ConcurrencyLimiter(Protocol):
    """Counts work in progress per tenant (e.g. previews waiting for a worker)."""

    def acquire(self, tenant_id: str, token: str, *, limit: int, hold_seconds: float) -> None:
        """Hold one slot for `token`; raise `RateLimitedError` when the tenant already holds `limit`.

        A slot not released within `hold_seconds` (a crashed process) frees itself.
        """

    def release(self, tenant_id: str, token: str) -> None:
        """Free the slot of `token` (a no-op when it is not held)."""


class MemoryConcurrencyLimiter:
    """Slots held in this process (one API process, or tests)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._name = name
        self._clock = clock
        self._held: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, tenant_id: str, token: str, *, limit: int, hold_seconds: float) -> None:
        """Hold one slot for `token`; raise `RateLimitedError` when the tenant already holds `limit`."""
        now = self._clock()
        with self._lock:
            held = self._held.setdefault(tenant_id, {})
            for stale in [t for t, until in held.items() if until <= now]:
                del held[stale]
            if len(held) >= limit:
                retry_after = min(held.values()) - now
                raise RateLimitedError(
                    f"{limit} concurrent {self._name} already in progress for this tenant",
                    retry_after_seconds=math.ceil(min(retry_after, CONCURRENCY_RETRY_AFTER_SECONDS)),
                )
            held[token] = now + hold_seconds

    def release(self, tenant_id: str, token: str) -> None:
        """Free the slot of `token`."""
        with self._lock:
            held = self._held.get(tenant_id, {})
            held.pop(token, None)
            if not held:
                self._held.pop(tenant_id, None)


class RedisConcurrencyLimiter:
    """Slots held in a Redis sorted set per tenant (member: token, score: when it frees itself), shared by
    every API replica. Adding and counting run in one MULTI, so two replicas cannot both take the last slot."""

    def __init__(self, redis_client: Any, name: str, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis_client
        self._name = name
        self._clock = clock

    def _key(self, tenant_id: str) -> str:
        return f"catalogan:{self._name}:{tenant_id}"

    def acquire(self, tenant_id: str, token: str, *, limit: int, hold_seconds: float) -> None:
        """Hold one slot for `token`; raise `RateLimitedError` when the tenant already holds `limit`."""
        now = self._clock()
        key = self._key(tenant_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zadd(key, {token: now + hold_seconds})
        pipe.zcard(key)
        pipe.expire(key, math.ceil(hold_seconds) + 5)
        held = int(pipe.execute()[2])
        if held > limit:
            self._redis.zrem(key, token)
            raise RateLimitedError(
                f"{limit} concurrent {self._name} already in progress for this tenant",
                retry_after_seconds=CONCURRENCY_RETRY_AFTER_SECONDS,
            )

    def release(self, tenant_id: str, token: str) -> None:
        """Free the slot of `token`."""
        self._redis.zrem(self._key(tenant_id), token)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodySizeLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413: at once from `Content-Length`, or while streaming a chunked one.

    `path_limits` gives paths whose bodies are always small a tighter bound, `(path prefix, max bytes)`: forms
    (the console's) are parsed before the route's dependencies check who sent them, so their bound is what
    an anonymous caller can make the server parse.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        on_too_large: Callable[[Scope, int], ASGIApp],
        path_limits: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_too_large = on_too_large
        self.path_limits = tuple(path_limits)

    def limit_for(self, path: str) -> int:
        """The body bound of `path`: the tightest of `max_bytes` and the limits of the prefixes it starts with."""
        return min(
            [self.max_bytes, *(limit for prefix, limit in self.path_limits if path.startswith(prefix))]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit_for(str(scope.get("path", "")))
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self.on_too_large(scope, max_bytes)(scope, receive, send)
            return
        received = 0
        tripped = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    tripped = True
                    raise PayloadTooLargeError(max_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Once the body went over the limit, whatever the app answers instead (FastAPI turns an error while
            # it reads a JSON body into a 400 "error parsing the body") is dropped for the 413 below.
            if tripped and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except PayloadTooLargeError:
            if not tripped:
                raise
        if tripped and not started:
            await self.on_too_large(scope, max_bytes)(scope, receive, send)
