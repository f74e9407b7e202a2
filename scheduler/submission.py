"""How the API process queues submits before they reach the one submit path (`db.planning.submit_job`).

`submit_job` locks the tenant's row for its transaction, which orders submits across API processes. Within
one API process, one tenant's submits also queue on a `TenantSubmitLocks` lock *before* they take a thread
or a pooled connection, so a burst from one tenant waits on the event loop: without it, every waiter would
hold a connection while it waited for the row lock, and the pool would run dry for everyone.

    async with locks.queued(tenant_id, max_waiting=64):     # 429 at once when 64 already queue
        ...read and parse the body (off the event loop)...
        async with locks.turn(tenant_id, wait_seconds=60, client_gone=request.is_disconnected):
            planned = await anyio.to_thread.run_sync(submit, limiter=locks.threads())

Bounds (issue 12): a tenant has at most `max_waiting` submits queued or running in this process (one more
is a 429 with `Retry-After`, refused before its body is read); a queued submit waits at most `wait_seconds`
for its turn (then 429); and a submit whose client has gone away before its turn is dropped, not committed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.lowlevel import RunVar

from scheduler.errors import RateLimitedError

# Threads for the submits' transactions, apart from the shared pool of sync routes: a submit holding its
# tenant's turn must not queue for a thread behind status reads. Submits of different tenants run in parallel.
SUBMIT_THREADS = 8
# What a tenant whose submit queue is full is told to wait.
QUEUE_FULL_RETRY_AFTER_SECONDS = 5
# How often a queued submit checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.25


class SubmitAbandonedError(Exception):
    """Raised when a queued submit's client went away before its turn: nothing was written."""


@dataclass(slots=True)
class _TenantQueue:
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    users: int = 0


@dataclass(slots=True)
class _LoopState:
    queues: dict[str, _TenantQueue] = field(default_factory=dict)
    threads: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(SUBMIT_THREADS))


class TenantSubmitLocks:
    """One FIFO lock per tenant for this process's submits, kept only while someone holds or waits for it,
    and the threads that run the submits' transactions.

    State lives per event loop (an anyio `RunVar`), so an app served by several test clients' loops in turn
    never shares a lock between loops.
    """

    def __init__(self) -> None:
        self._state: RunVar[_LoopState] = RunVar(f"catalogan_tenant_submit_locks_{id(self)}")

    def _loop_state(self) -> _LoopState:
        state = self._state.get(None)
        if state is None:
            state = _LoopState()
            self._state.set(state)
        return state

    @asynccontextmanager
    async def hold(self, tenant_id: str) -> AsyncIterator[None]:
        """Wait (on the event loop, holding nothing else) until this is the tenant's only submit in flight."""
        queues = self._loop_state().queues
        queue = queues.get(tenant_id)
        if queue is None:
            queue = queues[tenant_id] = _TenantQueue()
        queue.users += 1
        try:
            async with queue.lock:
                yield
        finally:
            queue.users -= 1
            if queue.users == 0:
                del queues[tenant_id]

    @asynccontextmanager
    async def queued(self, tenant_id: str, *, max_waiting: int) -> AsyncIterator[None]:
        """Count one submit of `tenant_id` as queued in this process for the block; raise `RateLimitedError`
        (429) at once when `max_waiting` already are, before anything of the request is read."""
        queues = self._loop_state().queues
        queue = queues.get(tenant_id)
        if queue is not None and queue.users >= max_waiting:
            raise RateLimitedError(
                f"{max_waiting} submits of this tenant are already queued; send fewer at once",
                retry_after_seconds=QUEUE_FULL_RETRY_AFTER_SECONDS,
            )
        if queue is None:
            queue = queues[tenant_id] = _TenantQueue()
        queue.users += 1
        try:
            yield
        finally:
            queue.users -= 1
            if queue.users == 0:
                del queues[tenant_id]

    @asynccontextmanager
    async def turn(
        self,
        tenant_id: str,
        *,
        wait_seconds: float,
        client_gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[None]:
        """Inside `queued`: wait for the tenant's turn at most `wait_seconds` (then `RateLimitedError`), and
        raise `SubmitAbandonedError` when the client went away while waiting."""
        queue = self._loop_state().queues[tenant_id]
        deadline = anyio.current_time() + wait_seconds
        while True:
            with anyio.move_on_after(min(DISCONNECT_POLL_SECONDS, max(0.0, deadline - anyio.current_time()))):
                await queue.lock.acquire()
                break
            if client_gone is not None and await client_gone():
                raise SubmitAbandonedError("the client went away while its submit was queued")
            if anyio.current_time() >= deadline:
                raise RateLimitedError(
                    f"this tenant's earlier submits did not finish within {wait_seconds:g} s; retry later",
                    retry_after_seconds=math.ceil(wait_seconds),
                )
        try:
            if client_gone is not None and await client_gone():
                raise SubmitAbandonedError("the client went away while its submit was queued")
            yield
        finally:
            queue.lock.release()

    def waiting(self, tenant_id: str) -> int:
        """Submits of `tenant_id` holding or waiting for its lock in this loop (0 when none)."""
        queue = self._loop_state().queues.get(tenant_id)
        return queue.users if queue else 0

    def threads(self) -> anyio.CapacityLimiter:
        """The limiter to run a submit's transaction under (`anyio.to_thread.run_sync(..., limiter=)`)."""
        return self._loop_state().threads
