"""API keys and console sessions checked under a flood of made-up keys (`scheduler/api/auth_gate.py`).

The lookups run on `CATALOGAN_AUTH_THREADS` threads of their own, never the shared pool every sync route
needs; a client address with `CATALOGAN_AUTH_FAILURES_PER_WINDOW` failed checks is refused (429 with
Retry-After) before any lookup. uvicorn on loopback and PostgreSQL; the key lookup of made-up keys is held
by the test."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from db import tenants
from db.storage import MemoryStore
from scheduler.api.auth_gate import OTHER_ADDRESSES, FailedChecks, address_key
from scheduler.errors import RateLimitedError
from scheduler.settings import ApiSettings, WebhookSettings
from tests.pipeline import wait_for
from tests.scheduler.conftest import Credentials, LiveServer, _app

AT_ONCE_SECONDS = 3.0  # well under the time the made-up keys' lookups are held, on a busy 2-core box
HELD_SECONDS = 60  # a held lookup goes on by itself after this long (a failing test never hangs)
HTTP_TIMEOUT_SECONDS = 90.0
SHARED_POOL_THREADS = 40  # anyio's default thread limiter, which FastAPI's sync routes share


def made_up_key() -> str:
    """A well-formed key no tenant has (it reaches the lookup)."""
    prefix = secrets.token_hex(tenants.API_KEY_PREFIX_BYTES)
    return f"{tenants.API_KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"


class Lookups:
    """`db.tenants.authenticate_api_key`, counted, with the lookups of made-up keys held until `release()`."""

    def __init__(self, real: Callable[..., Any], known: set[str]) -> None:
        self.real = real
        self.known = known
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def __call__(self, session: Session, clear_key: str) -> Any:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if clear_key not in self.known:
                self.gate.wait(HELD_SECONDS)
            return self.real(session, clear_key)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Lookups:
    watched = Lookups(tenants.authenticate_api_key, set())
    monkeypatch.setattr(tenants, "authenticate_api_key", watched)
    return watched


def _app_with(
    settings: ApiSettings, pg_factory: sessionmaker[Session], tmp_path: Path, model_version: Any
) -> Any:
    return _app(
        pg_factory, MemoryStore(), [], tmp_path, settings, WebhookSettings(webhook_allow_private_targets=True)
    )


@pytest.fixture
def live(pg_factory: sessionmaker[Session], tmp_path: Path, model_version: Any) -> Iterator[str]:
    """uvicorn on loopback with 4 authentication threads and failures not limited (one address: 127.0.0.1)."""
    app = _app_with(
        ApiSettings(auth_threads=4, auth_failures_per_window=100_000), pg_factory, tmp_path, model_version
    )
    server = LiveServer(app).start()
    yield server.url
    server.stop()


def _timed(http: httpx.Client, path: str, key: str | None = None) -> tuple[int, float]:
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = http.get(path, headers=headers)
    return response.status_code, time.monotonic() - started


@pytest.mark.integration
def test_a_flood_of_made_up_keys_takes_only_the_authentication_threads(
    live: str, lookups: Lookups, make_tenant: Callable[..., Credentials]
) -> None:
    """Given 48 requests with made-up keys whose lookups hang (more than the shared pool's 40 threads), then
    at most 4 lookups run at once, and a sync route (the console's sign-in form, on the shared pool) answers
    at once meanwhile; once the lookups go on, each made-up key is a 401 and a tenant's key works."""
    tenant = make_tenant()
    lookups.known.add(tenant.api_key)
    lookups.gate.clear()
    with ThreadPoolExecutor(48) as pool, httpx.Client(base_url=live, timeout=HTTP_TIMEOUT_SECONDS) as http:
        flood = [pool.submit(_timed, http, "/v1/jobs", made_up_key()) for _ in range(SHARED_POOL_THREADS + 8)]
        wait_for(lambda: lookups.running == 4, timeout=20, what="four held lookups")
        time.sleep(1.0)  # the rest of the flood is in the server, waiting
        form = _timed(http, "/console/sign-in")
        most_while_held = lookups.most_at_once
        lookups.gate.set()
        answers = [future.result() for future in flood]
        theirs = _timed(http, "/v1/jobs", tenant.api_key)

    assert form[0] == 200 and form[1] < AT_ONCE_SECONDS, form
    assert most_while_held == 4
    assert [status for status, _ in answers] == [401] * (SHARED_POOL_THREADS + 8)
    assert theirs[0] == 200


def test_an_address_out_of_failures_is_refused_before_any_lookup(
    pg_factory: sessionmaker[Session],
    tmp_path: Path,
    model_version: Any,
    lookups: Lookups,
    make_tenant: Callable[..., Credentials],
) -> None:
    """Given an address that made 5 failed checks (the limit), then its next request is a 429 with
    Retry-After and no lookup, even with a tenant's key, on the API and the console's sign-in; another
    address is not affected."""
    tenant = make_tenant()
    lookups.known.add(tenant.api_key)
    app = _app_with(
        ApiSettings(auth_failures_per_window=5, rate_limit_window_seconds=3600),
        pg_factory,
        tmp_path,
        model_version,
    )
    with (
        TestClient(app, raise_server_exceptions=False, client=("203.0.113.7", 4000)) as attacker,
        TestClient(app, raise_server_exceptions=False, client=("198.51.100.1", 4000)) as other,
    ):
        statuses = [
            attacker.get("/v1/jobs", headers={"Authorization": f"Bearer {made_up_key()}"}).status_code
            for _ in range(5)
        ]
        calls = lookups.calls
        refused = attacker.get("/v1/jobs", headers={"Authorization": f"Bearer {made_up_key()}"})
        refused_own_key = attacker.get("/v1/jobs", headers=tenant.headers)
        form = attacker.get("/console/sign-in")
        sign_in = attacker.post(
            "/console/sign-in",
            data={"api_key": tenant.api_key, "csrf_token": form.cookies.get("catalogan_console_sign_in", "")},
        )
        lookups_after = lookups.calls
        elsewhere = other.get("/v1/jobs", headers=tenant.headers)

    assert statuses == [401] * 5
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 3600
    assert "failed authentications from this address" in refused.json()["detail"]
    assert refused_own_key.status_code == 429
    assert sign_in.status_code == 429 and "Retry-After" in sign_in.headers
    assert lookups_after == calls, "a refused address made no lookup"
    assert elsewhere.status_code == 200


def test_a_cookie_that_opens_no_session_counts_as_a_failure(
    pg_factory: sessionmaker[Session], tmp_path: Path, model_version: Any
) -> None:
    """Given made-up console session cookies, each sends the browser to sign in until the address has used
    its failures; then a 429."""
    app = _app_with(
        ApiSettings(auth_failures_per_window=3, rate_limit_window_seconds=3600),
        pg_factory,
        tmp_path,
        model_version,
    )
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as browser:
        answers = []
        for _ in range(4):
            browser.cookies.set("catalogan_console", secrets.token_urlsafe(32), path="/console")
            answers.append(browser.get("/console/jobs").status_code)

    assert answers == [303, 303, 303, 429]


def test_addresses_are_counted_per_ipv4_address_and_ipv6_64() -> None:
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key(None) == "(unknown)"


def test_failures_are_forgotten_with_their_window_and_tracked_addresses_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    checks = FailedChecks(limit=2, window_seconds=60, clock=lambda: now[0])
    checks.count("a")
    checks.count("a")
    with pytest.raises(RateLimitedError) as refused:
        checks.refuse_if_over("a")
    assert refused.value.retry_after_seconds == 20  # the window of [960, 1020) ends in 20 s
    checks.refuse_if_over("b")
    now[0] = 1020.0  # the next window
    checks.refuse_if_over("a")

    monkeypatch.setattr("scheduler.api.auth_gate.AUTH_TRACKED_ADDRESSES", 3)
    for address in ["x", "y", "z", "new-1", "new-2"]:
        checks.count(address)
    assert len(checks._counts) == 4 and checks._counts[OTHER_ADDRESSES] == 2
    with pytest.raises(RateLimitedError):
        checks.refuse_if_over("new-3")  # counted with the others, who used 2
    checks.refuse_if_over("x")
