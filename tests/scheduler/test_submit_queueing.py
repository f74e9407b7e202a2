"""Queueing in the API process: one tenant's submits take turns on the event loop (other tenants do not wait),
request sessions are bounded below the connection pool, and a pool that stays exhausted is a 503."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool, QueuePool

from db.engine import make_session_factory
from db.storage import MemoryStore
from scheduler.api.deps import session_slot_count
from scheduler.settings import ApiSettings, WebhookSettings
from scheduler.submission import TenantSubmitLocks
from tests.scheduler.conftest import Credentials, _app


async def _run_submits(locks: TenantSubmitLocks, tenants: list[str]) -> tuple[dict[str, int], list[str]]:
    """Each tenant in `tenants` runs one fake submit under the lock; returns the most submits of one tenant
    that were ever inside at once, and the order in which submits entered."""
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    order: list[str] = []
    # Whoever gets in first stays inside until every submit has arrived: a fixed sleep there could run out
    # while the later ones are still being started (a loaded machine may stop this process for longer), and
    # then a's second submit would go in before b's first had even arrived.
    all_arrived = anyio.Event()

    async def submit(tenant: str, position: int) -> None:
        async with locks.hold(tenant):
            order.append(f"{tenant}{position}")
            inside[tenant] = inside.get(tenant, 0) + 1
            most[tenant] = max(most.get(tenant, 0), inside[tenant])
            await all_arrived.wait()
            await anyio.sleep(0.01)  # a submit's thread hop: others get the loop meanwhile
            inside[tenant] -= 1

    async with anyio.create_task_group() as group:
        for position, tenant in enumerate(tenants):
            group.start_soon(submit, tenant, position)
            await anyio.sleep(0)  # start them in this order
        all_arrived.set()
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


def test_an_exhausted_connection_pool_is_a_503_with_retry_after(
    pg_url: str, make_tenant: Callable[..., Credentials], tmp_path: Path
) -> None:
    # Given the API on a one-connection pool that gives up after 0.2 s, and that connection taken elsewhere
    tenant = make_tenant()
    engine = create_engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    app = _app(make_session_factory(engine), MemoryStore(), [], tmp_path, ApiSettings(), WebhookSettings())
    try:
        with engine.connect(), TestClient(app, raise_server_exceptions=False) as client:
            # When a request needs a connection
            response = client.get("/v1/jobs", headers=tenant.headers)
        # Then it is told to come back later, as a problem, instead of a 500
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["Retry-After"]) > 0
        assert "database connection" in response.json()["detail"]
    finally:
        engine.dispose()
