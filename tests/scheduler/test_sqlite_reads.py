"""The embedded API (SQLite) answers reads while another process holds the database's one write lock.

On SQLite every ordinary transaction begins IMMEDIATE and so waits for the write lock. A worker committing a
chunk, or a submit planning a large job, holds it; every API request used to wait behind it (authentication
alone opened such a transaction), for up to the 30 s busy timeout. Reads now use sessions whose transactions
begin DEFERRED: under WAL they take no lock and see the last committed state.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory, transaction
from db.storage import MemoryStore
from db.tenants import create_api_key, create_tenant
from scheduler.settings import ApiSettings, WebhookSettings
from tests.pipeline import make_model_version
from tests.scheduler.conftest import LiveServer, _app
from tests.scheduler.test_console import sign_in

# How long the test holds the write lock at most while the reads are sent (the reads must all answer first).
LOCK_HELD_AT_MOST_SECONDS = 20


@pytest.fixture
def sqlite_factory(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_reads_and_console_pages_answer_while_another_process_holds_the_write_lock(
    sqlite_url: str,
    sqlite_factory: sessionmaker[Session],
    tmp_path: Path,
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given an embedded API with a job, and another process holding SQLite's write lock (BEGIN IMMEDIATE),
    when a client reads the job, the job list, its images, the models, the metrics and a console page, then
    every one answers while the lock is still held (before: each waited for the lock)."""
    make_model_version(sqlite_factory)
    with transaction(sqlite_factory) as session:
        tenant = create_tenant(session, f"t-{uuid.uuid4().hex[:8]}")
        session.flush()
        key = create_api_key(session, tenant.id, name="test").clear_key
    headers = {"Authorization": f"Bearer {key}"}
    app = _app(sqlite_factory, MemoryStore(), [], tmp_path, ApiSettings(), WebhookSettings())
    url = live_server_factory(app).url
    with httpx.Client(base_url=url, timeout=60) as client:
        created = client.post("/v1/jobs", json={"items": [{"category": "a", "count": 3}]}, headers=headers)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        sign_in(client, key)  # type: ignore[arg-type]  # httpx.Client: the TestClient's interface
        cookies = dict(client.cookies)

    def get(path: str) -> int:
        with httpx.Client(base_url=url, timeout=60, headers=headers, cookies=cookies) as reader:
            return reader.get(path).status_code

    paths = [
        f"/v1/jobs/{job_id}",
        "/v1/jobs",
        f"/v1/jobs/{job_id}/images",
        "/v1/models",
        "/metrics",
        "/console/jobs",
        f"/console/jobs/{job_id}",
    ]
    writer = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(len(paths)) as pool:
            futures = {path: pool.submit(get, path) for path in paths}
            done, _ = wait(futures.values(), timeout=LOCK_HELD_AT_MOST_SECONDS)
            answered_under_lock = {path for path, future in futures.items() if future in done}
            writer.execute("ROLLBACK")
            statuses = {path: future.result() for path, future in futures.items()}
    finally:
        writer.close()
    assert answered_under_lock == set(paths), f"waited for the write lock: {set(paths) - answered_under_lock}"
    assert set(statuses.values()) == {200}, statuses


def test_a_wrong_key_at_the_console_sign_in_is_refused_while_another_process_holds_the_write_lock(
    sqlite_url: str,
    sqlite_factory: sessionmaker[Session],
    tmp_path: Path,
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given an embedded API and another process holding SQLite's write lock, when a browser signs in with a
    key that does not exist, then the 401 comes while the lock is held (before: each failed attempt opened a
    write transaction, so anyone could queue sign-ins behind, and in front of, the workers' commits)."""
    app = _app(sqlite_factory, MemoryStore(), [], tmp_path, ApiSettings(), WebhookSettings())
    url = live_server_factory(app).url

    def wrong_sign_in() -> int:
        with httpx.Client(base_url=url, timeout=60) as browser:
            form = browser.get("/console/sign-in")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token is not None
            return browser.post(
                "/console/sign-in",
                data={"api_key": "cg_" + "0" * 12 + "_" + "x" * 43, "csrf_token": token.group(1)},
            ).status_code

    writer = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(wrong_sign_in)
            done, _ = wait([future], timeout=LOCK_HELD_AT_MOST_SECONDS)
            writer.execute("ROLLBACK")
            status = future.result()
    finally:
        writer.close()
    assert future in done, "the failed sign-in waited for the write lock"
    assert status == 401
