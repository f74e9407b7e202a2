"""Threads for reading an image out of a tar job's shard: bounded per process and per tenant.

One image of a tar job is a member of a WebDataset shard of up to `MAX_SHARD_BYTES`; reading it streams the
shard up to the member, so the last image of a full shard reads all of it. The image route has no rate limit
(a grid fetches dozens a second), so on the shared thread pool one signed-in tenant looping over last members
could hold every thread of it and slow every tenant's pages. These reads run on threads of their own instead:
at most `total` at once in the process, at most `per_tenant` of them one tenant's; a request over either
waits on the event loop, holding no thread and no connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")
SHARD_READ_THREADS = 4
SHARD_READS_PER_TENANT = 2


class ShardReads:
    """Runs shard reads on a bounded pool of threads, at most `per_tenant` of one tenant's at once."""

    def __init__(self, total: int = SHARD_READ_THREADS, per_tenant: int = SHARD_READS_PER_TENANT) -> None:
        self.total, self.per_tenant = total, per_tenant
        self._threads: anyio.CapacityLimiter | None = None  # made on the event loop, at first use
        self._tenants: dict[str, anyio.CapacityLimiter] = {}
        self._users: dict[str, int] = {}  # requests holding or waiting on each tenant's limiter

    async def run(self, tenant_id: str, read: Callable[[], T]) -> T:
        """`read()` on one of the shard threads, once this tenant has fewer than `per_tenant` running."""
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(self.total)
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = anyio.CapacityLimiter(self.per_tenant)
        self._users[tenant_id] = self._users.get(tenant_id, 0) + 1
        try:
            async with tenant:
                return await anyio.to_thread.run_sync(read, limiter=self._threads)
        finally:
            self._users[tenant_id] -= 1
            if not self._users[tenant_id]:  # nobody holds or waits: forget the tenant (memory stays bounded)
                del self._users[tenant_id], self._tenants[tenant_id]

    def in_use(self, tenant_id: str) -> int:
        """Requests of this tenant reading or waiting to read (for tests and metrics)."""
        return self._users.get(tenant_id, 0)
