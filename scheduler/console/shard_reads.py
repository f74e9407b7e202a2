"""Threads of their own for the console's reads from the object store: bounded per process and per tenant.

Two kinds of read serve the console's image bytes, each on its own `StoreReads`:

- a tar job's image is a member of a WebDataset shard of up to `MAX_SHARD_BYTES`; reading it streams the
  shard up to the member, so the last image of a full shard reads all of it (`Console.shard_reads`);
- any other image is one row lookup and one GET of a small object (`Console.image_reads`).

The image route has no rate limit (a grid fetches dozens a second), so on the shared thread pool one signed-in
tenant looping over images could hold every thread of it and slow every tenant's pages. These reads run on
threads of their own instead: at most `total` at once in the process, at most `per_tenant` of them one
tenant's; a request over either waits on the event loop, holding no thread and no connection. At most
`waiting_per_tenant` of a tenant's requests wait so; one more is refused at once (`RateLimitedError`: 429
with `Retry-After`), before it takes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from scheduler.errors import RateLimitedError

T = TypeVar("T")
SHARD_READ_THREADS = 4
SHARD_READS_PER_TENANT = 2
SHARD_READS_WAITING_PER_TENANT = 16
IMAGE_READ_THREADS = 8
IMAGE_READS_PER_TENANT = 4
# A browser fetches about 6 tiles at a time per host; a few reviewers of one tenant fit in this many.
IMAGE_READS_WAITING_PER_TENANT = 32
REFUSED_RETRY_AFTER_SECONDS = 1  # a refused read: the ones ahead of it are short


class StoreReads:
    """Runs store reads on a bounded pool of threads, at most `per_tenant` of one tenant's at once and at most
    `waiting_per_tenant` more of its requests waiting for their turn."""

    def __init__(
        self,
        total: int = SHARD_READ_THREADS,
        per_tenant: int = SHARD_READS_PER_TENANT,
        waiting_per_tenant: int = SHARD_READS_WAITING_PER_TENANT,
        *,
        name: str = "shard reads",
    ) -> None:
        self.total, self.per_tenant, self.waiting_per_tenant = total, per_tenant, waiting_per_tenant
        self.name = name  # what a refusal calls these reads
        self._threads: anyio.CapacityLimiter | None = None  # made on the event loop, at first use
        self._tenants: dict[str, anyio.CapacityLimiter] = {}
        self._users: dict[str, int] = {}  # requests holding or waiting on each tenant's limiter

    async def run(self, tenant_id: str, read: Callable[[], T]) -> T:
        """`read()` on one of these threads, once this tenant has fewer than `per_tenant` running.

        Raises `RateLimitedError` at once, before anything is taken, when `per_tenant + waiting_per_tenant`
        of the tenant's requests already run or wait."""
        in_use = self._users.get(tenant_id, 0)
        if in_use >= self.per_tenant + self.waiting_per_tenant:
            raise RateLimitedError(
                f"{in_use} {self.name} of this tenant are running or waiting: try again shortly",
                retry_after_seconds=REFUSED_RETRY_AFTER_SECONDS,
            )
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(self.total)
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = anyio.CapacityLimiter(self.per_tenant)
        self._users[tenant_id] = in_use + 1
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


ShardReads = StoreReads  # the name the shard reads were introduced under


def new_shard_reads() -> StoreReads:
    """The reads of tar jobs' images out of their shards (long: up to a whole shard each)."""
    return StoreReads(name="shard reads")


def new_image_reads() -> StoreReads:
    """The reads of other images: the row lookup and one GET of a small object, in one call."""
    return StoreReads(
        IMAGE_READ_THREADS, IMAGE_READS_PER_TENANT, IMAGE_READS_WAITING_PER_TENANT, name="image reads"
    )
