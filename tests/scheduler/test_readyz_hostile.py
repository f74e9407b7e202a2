"""`/readyz` asked by many anonymous callers at once (outside audit, resource holding): they share one check of
the database, the broker and the object store, run on a thread of its own, and its answer for a second, so the
probes cost other requests nothing. uvicorn on loopback, PostgreSQL, Redis and SeaweedFS (the store counted,
and its HEAD slowed, by `GatedS3Store`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from db.storage import ObjectStore
from scheduler.settings import ApiSettings
from tests.scheduler.conftest import LiveServer, serve_live_api
from tests.scheduler.gated_store import GatedS3Store

pytestmark = pytest.mark.integration

CALLERS = 60  # more than the shared thread pool's 40 threads


@pytest.fixture
def pings(pg_factory: sessionmaker[Session]) -> Iterator[list[str]]:
    """The `SELECT 1` statements sent through `pg_factory`'s engine during the test (the readiness pings)."""
    engine = pg_factory.kw["bind"]
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.strip().upper() == "SELECT 1":
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_concurrent_readiness_probes_share_one_check_and_hold_no_shared_thread(
    pg_factory: sessionmaker[Session],
    redis_url: str,
    s3_store: ObjectStore,
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
    pings: list[str],
) -> None:
    """Given an object store whose readiness HEAD takes 2 s, when 60 anonymous callers ask /readyz at once,
    then every one gets 200, the dependencies were checked once (one HEAD, one database ping), and /healthz
    (a sync route: a thread of the shared pool) answers at once meanwhile. A second and more later, the next
    probe checks again. Before: 60 checks, 40 of them at once on the shared pool, and /healthz waited ~2 s."""
    store = GatedS3Store(s3_store.url)
    store.delay_seconds = 2.0
    url = serve_live_api(ApiSettings(), pg_factory, redis_url, store, tmp_path, live_server_factory)
    limits = httpx.Limits(max_connections=CALLERS + 5)
    with httpx.Client(base_url=url, timeout=30, limits=limits) as http, ThreadPoolExecutor(CALLERS) as pool:
        # When 60 callers ask at once
        probes = [pool.submit(http.get, "/readyz") for _ in range(CALLERS)]
        deadline = time.monotonic() + 10
        while not store.running("exists") and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the other callers arrive while the check runs
        started = time.monotonic()
        health = http.get("/healthz")
        health_seconds = time.monotonic() - started
        answers = [probe.result() for probe in probes]

        # Then all are ready, from one check, and the shared pool stayed free for /healthz
        assert [answer.status_code for answer in answers] == [200] * CALLERS
        assert answers[0].json()["checks"] == {"database": "ok", "broker": "ok", "object_store": "ok"}
        assert (store.calls["exists"], store.most_at_once["exists"], len(pings)) == (1, 1, 1)
        assert health.status_code == 200 and health_seconds < 1.0, health_seconds

        # And once the answer is over a second old, the next probe checks again
        time.sleep(1.2)
        store.delay_seconds = 0.0
        assert http.get("/readyz").status_code == 200
        assert (store.calls["exists"], len(pings)) == (2, 2)
