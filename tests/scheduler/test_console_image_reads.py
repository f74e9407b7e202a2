"""The console's image bytes under a flood from one tenant (outside audit, resource holding): each request's row
lookup and GET run in one call on the console's image threads, at most 4 of a tenant's at once and 32 more
waiting on the event loop; one more is a 429 with `Retry-After`, and other tenants' pages keep their threads.
uvicorn on loopback, PostgreSQL and SeaweedFS (the store counted and held by `GatedS3Store`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.storage import ObjectStore
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app
from tests.scheduler.gated_store import GatedS3Store
from tests.scheduler.test_console import insert_finished_job, png_bytes, sign_in

pytestmark = pytest.mark.integration

FLOOD = 60  # more than the shared thread pool's 40 threads
READING, WAITING = 4, 32  # a tenant's image reads at once, and more waiting their turn


def test_one_tenants_flood_of_image_requests_is_bounded_and_leaves_others_their_threads(
    pg_factory: sessionmaker[Session],
    s3_store: ObjectStore,
    published: list[Any],
    tmp_path: Path,
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given a tenant limited to 5 requests a minute whose image GETs are held in the store, when it asks for
    60 image files at once, then 4 GETs run, 32 requests wait, and the other 24 are 429s with `Retry-After`;
    meanwhile another tenant's image and jobs page answer at once. Released, the 36 get their bytes.
    Before: all 60 ran on the shared pool (its 40 threads held in the store), none was refused, and the other
    tenant waited for the flood."""
    store = GatedS3Store(s3_store.url)
    flooder, other = make_tenant("flooder", requests_per_minute=5), make_tenant("other")
    job = insert_finished_job(pg_factory, store, flooder.tenant_id, model_version)
    other_job = insert_finished_job(pg_factory, store, other.tenant_id, model_version)
    url = live_server_factory(
        _app(pg_factory, store, published, tmp_path, ApiSettings(), WebhookSettings())
    ).url
    limits = httpx.Limits(max_connections=FLOOD + 5)
    with (
        httpx.Client(base_url=url, timeout=60, limits=limits) as browser,
        httpx.Client(base_url=url, timeout=30) as bystander,
        ThreadPoolExecutor(FLOOD) as pool,
    ):
        sign_in(browser, flooder.api_key)  # type: ignore[arg-type]
        sign_in(bystander, other.api_key)  # type: ignore[arg-type]
        store.hold(f"{flooder.tenant_id}/")
        try:
            # When the flooder asks for 60 image files at once
            paths = [f"/console/jobs/{job.job_id}/images/{i % 6}/file" for i in range(FLOOD)]
            requests = [pool.submit(browser.get, path) for path in paths]
            refused = _wait_for(lambda: sum(r.done() for r in requests) >= FLOOD - READING - WAITING)
            # Then 4 of its GETs run and the rest wait or are refused
            assert refused and store.running("get held") == READING, store.running("get held")
            # And the other tenant's image and page answer at once meanwhile
            started = time.monotonic()
            theirs = bystander.get(f"/console/jobs/{other_job.job_id}/images/2/file")
            page = bystander.get(f"/console/jobs/{other_job.job_id}")
            bystander_seconds = time.monotonic() - started
        finally:
            store.release()
        answers = [request.result() for request in requests]
    assert theirs.status_code == 200 and theirs.content == png_bytes(2)
    assert page.status_code == 200 and bystander_seconds < 2.0, bystander_seconds
    codes = [answer.status_code for answer in answers]
    assert (codes.count(200), codes.count(429)) == (READING + WAITING, FLOOD - READING - WAITING), codes
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)
    assert all(a.content == png_bytes(i % 6) for i, a in enumerate(answers) if a.status_code == 200)
    assert store.most_at_once["get held"] == READING


def _wait_for(condition: Callable[[], bool], timeout_seconds: float = 30) -> bool:
    """True once `condition()` is; False after `timeout_seconds`."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_tenants_reads_past_the_waiting_bound_are_refused_before_taking_anything() -> None:
    """Given reads of one at a time per tenant and two waiting, when a tenant's fourth read comes while one
    runs and two wait, then it is a `RateLimitedError` with a `Retry-After` at once; another tenant's read goes
    on, the waiting ones hold no thread of the shared pool, and all three of the tenant's reads finish."""
    import threading

    import anyio
    import anyio.to_thread

    from scheduler.console.shard_reads import StoreReads
    from scheduler.errors import RateLimitedError

    reads = StoreReads(total=2, per_tenant=1, waiting_per_tenant=2, name="image reads")
    release = threading.Event()
    done: list[str] = []
    seen: dict[str, Any] = {}

    async def one(tenant: str) -> None:
        done.append(await reads.run(tenant, lambda: (release.wait(10), tenant)[1]))

    async def other() -> None:
        done.append(await reads.run("b", lambda: "b"))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(one, "a")
            while reads.in_use("a") < 3:
                await anyio.sleep(0.01)
            try:
                await reads.run("a", lambda: "a")
            except RateLimitedError as exc:
                seen["refused"] = exc
            seen["shared"] = anyio.to_thread.current_default_thread_limiter().borrowed_tokens
            group.start_soon(other)
            with anyio.fail_after(10):  # while tenant a's reads are still held
                while "b" not in done:
                    await anyio.sleep(0.01)
            release.set()

    anyio.run(main)
    assert isinstance(seen["refused"], RateLimitedError) and seen["refused"].retry_after_seconds >= 1
    assert seen["shared"] == 0
    assert done[0] == "b" and sorted(done) == ["a", "a", "a", "b"]
    assert reads.in_use("a") == 0
