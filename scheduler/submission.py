"""How the API process queues submits before they reach the one submit path (`db.planning.submit_job`).

`submit_job` locks the tenant's row for its transaction, which orders submits across API processes. Within
one API process, one tenant's submits also queue on a `TenantSubmitLocks` lock *before* they take a thread
or a pooled connection, so a burst from one tenant waits on the event loop: without it, every waiter would
hold a connection while it waited for the row lock, and the pool would run dry for everyone.

    async with locks.hold(tenant_id):
        planned = await anyio.to_thread.run_sync(submit, limiter=locks.threads())
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.lowlevel import RunVar

# Threads for the submits' transactions, apart from the shared pool of sync routes: a submit holding its
# tenant's turn must not queue for a thread behind status reads. Submits of different tenants run in parallel.
SUBMIT_THREADS = 8


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

    def waiting(self, tenant_id: str) -> int:
        """Submits of `tenant_id` holding or waiting for its lock in this loop (0 when none)."""
        queue = self._loop_state().queues.get(tenant_id)
        return queue.users if queue else 0

    def threads(self) -> anyio.CapacityLimiter:
        """The limiter to run a submit's transaction under (`anyio.to_thread.run_sync(..., limiter=)`)."""
        return self._loop_state().threads
