"""`ShardReads`: a tar job's images are read on threads of their own, at most `per_tenant` of one tenant's
at once, and a read waiting for its turn holds no thread of the shared pool (console audit, session 18)."""

from __future__ import annotations

import threading
import time

import anyio
import anyio.to_thread

from scheduler.console.shard_reads import ShardReads


def test_one_tenants_shard_reads_wait_their_turn_without_holding_a_shared_thread() -> None:
    reads = ShardReads(total=3, per_tenant=2)
    lock = threading.Lock()
    running = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0, "total": 0}
    release = threading.Event()

    def read(tenant: str) -> str:
        with lock:
            running[tenant] += 1
            most[tenant] = max(most[tenant], running[tenant])
            most["total"] = max(most["total"], running["a"] + running["b"])
        release.wait(10)
        with lock:
            running[tenant] -= 1
        return tenant

    results: list[str] = []
    shared_in_use: list[float] = []

    async def one(tenant: str) -> None:
        results.append(await reads.run(tenant, lambda: read(tenant)))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for tenant in ["a"] * 6 + ["b"] * 3:
                group.start_soon(one, tenant)
            deadline = time.monotonic() + 5
            while (running["a"], running["b"]) != (2, 1) and time.monotonic() < deadline:
                await anyio.sleep(0.01)
            assert (running["a"], running["b"]) == (2, 1)  # tenant a at its cap, b has the third thread
            assert (reads.in_use("a"), reads.in_use("b")) == (6, 3)  # the rest wait on the event loop
            shared_in_use.append(anyio.to_thread.current_default_thread_limiter().borrowed_tokens)
            release.set()

    anyio.run(main)
    assert sorted(results) == ["a"] * 6 + ["b"] * 3
    assert (most["a"], most["total"]) == (2, 3)
    assert shared_in_use == [0]  # seven waiting reads held none of the shared pool's threads
    assert (reads.in_use("a"), reads.in_use("b"), reads._tenants) == (0, 0, {})  # nothing kept per tenant
