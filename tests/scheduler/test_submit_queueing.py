"""Queueing in the API process: one tenant's submits take turns on the event loop (other tenants do not wait),
and request sessions are bounded below the connection pool."""

from __future__ import annotations

import anyio
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool, QueuePool

from db.engine import make_session_factory
from scheduler.api.deps import session_slot_count
from scheduler.submission import TenantSubmitLocks


async def _run_submits(locks: TenantSubmitLocks, tenants: list[str]) -> tuple[dict[str, int], list[str]]:
    """Each tenant in `tenants` runs one fake submit under the lock; returns the most submits of one tenant
    that were ever inside at once, and the order in which submits entered."""
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    order: list[str] = []

    async def submit(tenant: str, position: int) -> None:
        async with locks.hold(tenant):
            order.append(f"{tenant}{position}")
            inside[tenant] = inside.get(tenant, 0) + 1
            most[tenant] = max(most.get(tenant, 0), inside[tenant])
            await anyio.sleep(0.01)  # a submit's thread hop: others get the loop meanwhile
            inside[tenant] -= 1

    async with anyio.create_task_group() as group:
        for position, tenant in enumerate(tenants):
            group.start_soon(submit, tenant, position)
            await anyio.sleep(0)  # start them in this order
    return most, order


def test_one_tenants_submits_take_turns_in_arrival_order_and_other_tenants_do_not_wait() -> None:
    # Given the per-tenant submit locks of one API process
    locks = TenantSubmitLocks()
    # When 10 submits of tenant a and 1 of tenant b arrive at once
    most, order = anyio.run(_run_submits, locks, ["a"] * 5 + ["b"] + ["a"] * 5)
    # Then at most one of a's submits was ever inside, in arrival order; b's went in without waiting for a's
    assert most == {"a": 1, "b": 1}
    a_order = [name for name in order if name.startswith("a")]
    assert a_order == sorted(a_order, key=lambda name: int(name[1:]))
    assert order.index("b5") < order.index("a1")
    # and nothing is kept for tenants with no submit in flight
    assert anyio.run(_waiting_after, locks) == 0


async def _waiting_after(locks: TenantSubmitLocks) -> int:
    await _run_submits(locks, ["a", "a"])
    return locks.waiting("a")


def test_request_sessions_leave_part_of_the_pool_free() -> None:
    # Given engines with 5 + 5, 2 + 2 and 1 + 0 pooled connections, and one without a pool
    def slots(**pool: int) -> int | None:
        return session_slot_count(
            make_session_factory(create_engine("sqlite://", poolclass=QueuePool, **pool))
        )

    unpooled = make_session_factory(create_engine("sqlite://", poolclass=NullPool))
    # Then request sessions may use 8 of 10, 3 of 4, 1 of 1 (never 0), and are unbounded without a pool
    assert slots(pool_size=5, max_overflow=5) == 8
    assert slots(pool_size=2, max_overflow=2) == 3
    assert slots(pool_size=1, max_overflow=0) == 1
    assert session_slot_count(unpooled) is None
