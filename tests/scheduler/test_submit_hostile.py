"""One tenant's queued submits are bounded: a queue cap and a wait limit per tenant (429 with Retry-After),
and a submit whose client went away while it was queued is dropped, not committed. uvicorn on loopback and
PostgreSQL; the tenant's row is held locked from the test so its first submit stalls inside the submit path."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from db.storage import MemoryStore
from db.tables import Job, Tenant
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app


def _serve(
    settings: ApiSettings,
    factory: sessionmaker[Session],
    tmp_path: Path,
    start: Callable[[Any], LiveServer],
) -> str:
    return start(_app(factory, MemoryStore(), [], tmp_path, settings, WebhookSettings())).url


@contextmanager
def _tenant_row_locked(factory: sessionmaker[Session], tenant_id: str) -> Iterator[None]:
    """Hold the tenant's row lock (as a concurrent submit in another API process would)."""
    with factory() as session, session.begin():
        session.scalars(select(Tenant).where(Tenant.id == tenant_id).with_for_update()).one()
        yield


def _body(seed: int) -> dict[str, Any]:
    return {"items": [{"category": "a", "count": 1}], "seed": seed}


def _jobs_by_seed(factory: sessionmaker[Session], tenant_id: str) -> list[int]:
    with factory() as session:
        return sorted(
            int(seed) for seed in session.scalars(select(Job.seed).where(Job.tenant_id == tenant_id))
        )


def _waiting_on_a_lock(factory: sessionmaker[Session]) -> int:
    """How many sessions of this database wait for a lock (A's first submit, stalled on the tenant's row)."""
    with factory() as session:
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        return int(session.scalar(text(query)) or 0)


def _wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_tenants_queue_is_capped_and_its_wait_is_limited_with_429s(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given a cap of 3 queued submits per tenant, a 2 s wait limit, and tenant A's first submit stalled on its
    row lock, when A sends 5 more at once, then 3 are refused at once with 429 and Retry-After, the other 2 get
    429 after about the wait limit, and tenant B's submit meanwhile is a 201."""
    settings = ApiSettings(submit_queue_max_per_tenant=3, submit_wait_seconds=2)
    url = _serve(settings, pg_factory, tmp_path, live_server_factory)
    a, b = make_tenant(requests_per_minute=10_000), make_tenant()

    def submit(credentials: Credentials, seed: int) -> tuple[int, str | None, float]:
        with httpx.Client(base_url=url, timeout=60) as http:
            started = time.monotonic()
            response = http.post("/v1/jobs", json=_body(seed), headers=credentials.headers)
            return response.status_code, response.headers.get("retry-after"), time.monotonic() - started

    # Exits in reverse order: the row lock is released first, then the pool waits for A's first submit.
    with ThreadPoolExecutor(8) as pool, _tenant_row_locked(pg_factory, a.tenant_id):
        first = pool.submit(submit, a, 1)
        _wait_until(lambda: _waiting_on_a_lock(pg_factory) >= 1, 30)  # A's first submit, inside its turn
        more = [pool.submit(submit, a, 10 + i) for i in range(5)]
        other = pool.submit(submit, b, 99).result()
        results = [future.result() for future in more]
    assert first.result()[0] == 201
    assert other[0] == 201
    # Retry-After tells the two refusals apart: 5 s for a full queue, the 2 s wait limit for a timed-out turn.
    # "At once" is under the wait limit; a timed-out turn cannot answer before it.
    refused_at_once = [r for r in results if r[0] == 429 and r[1] == "5" and r[2] < 2.0]
    refused_after_waiting = [r for r in results if r[0] == 429 and r[1] == "2" and r[2] >= 1.9]
    assert len(refused_at_once) == 3, results
    assert len(refused_after_waiting) == 2, results
    assert all(r[1] is not None and int(r[1]) >= 1 for r in results)
    assert _jobs_by_seed(pg_factory, a.tenant_id) == [1]


def test_a_queued_submit_whose_client_went_away_is_not_committed(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given tenant A's first submit stalled on its row lock, when a second submit (seed 2) is sent whole and its
    client closes the connection while it is queued, then after the lock is released only the first job
    exists: the abandoned submit made no job."""
    url = _serve(ApiSettings(), pg_factory, tmp_path, live_server_factory)
    a = make_tenant()
    host, port = url.removeprefix("http://").split(":")
    results: dict[str, int] = {}
    with _tenant_row_locked(pg_factory, a.tenant_id):
        first = threading.Thread(
            target=lambda: results.setdefault(
                "first",
                httpx.post(f"{url}/v1/jobs", json=_body(1), headers=a.headers, timeout=60).status_code,
            )
        )
        first.start()
        # The first submit must hold the tenant's turn (stalled on the row lock) before the second is sent;
        # a fixed sleep let a busy box hand the turn to the second, which then committed once the lock went.
        _wait_until(lambda: _waiting_on_a_lock(pg_factory) >= 1, 30)
        body = json.dumps(_body(2)).encode()
        request = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {a.headers['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request)
            time.sleep(1.0)  # read, parsed and queued behind the first submit
        time.sleep(0.5)  # the server's event loop sees the closed connection before the turn passes
        # the client is gone; now the first submit may go on
    first.join(timeout=60)
    assert results["first"] == 201
    time.sleep(2.0)  # time for a wrongly kept submit to commit
    assert _jobs_by_seed(pg_factory, a.tenant_id) == [1]


def test_queued_submits_hold_no_parsed_body_while_they_wait(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """A submit's body is read and parsed in its turn, not while it waits: a parsed 10 MiB request takes about
    60 MiB, so 64 queued ones of one tenant (the default cap) could take 4 GiB of an API process."""
    import tracemalloc

    url = _serve(ApiSettings(), pg_factory, tmp_path, live_server_factory)
    a = make_tenant(requests_per_minute=10_000)
    pad = "x" * 240
    items = [
        {"category": "a", "count": 1, "sku": f"SKU-{i:06d}", "client_item_id": f"c-{i}-{pad}"}
        for i in range(4_500)
    ]
    body = json.dumps({"items": items, "seed": 5}).encode()  # ~1.6 MB of JSON, several times that parsed
    headers = {**a.headers, "Content-Type": "application/json"}

    def submit(content: bytes) -> int:
        with httpx.Client(base_url=url, timeout=120) as http:
            return http.post("/v1/jobs", content=content, headers=headers).status_code

    tracemalloc.start()
    try:
        with ThreadPoolExecutor(8) as pool, _tenant_row_locked(pg_factory, a.tenant_id):
            first = pool.submit(submit, json.dumps(_body(1)).encode())
            _wait_until(lambda: _waiting_on_a_lock(pg_factory) >= 1, 30)  # A's first submit, inside its turn
            before = tracemalloc.get_traced_memory()[0]
            queued = [pool.submit(submit, body) for _ in range(4)]
            time.sleep(2.0)  # sent (as much as the server reads) and queued behind the first
            held = tracemalloc.get_traced_memory()[0] - before
        statuses = [first.result(), *(future.result() for future in queued)]
    finally:
        tracemalloc.stop()
    # Then the four waiting submits held a few socket buffers between them, not parsed requests
    # (each waiting connection buffers what the server read of it before pausing: up to ~320 KiB)
    assert held < 2 * 2**20, (held, len(body))
    # And each was served in its turn once the first had gone through
    assert statuses == [201] * 5, statuses
