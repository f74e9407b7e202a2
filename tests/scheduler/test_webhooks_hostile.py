"""Webhook delivery against hostile receivers and names: DNS rebinding, a receiver dripping bytes, a huge
answer, and a slow tenant next to a fast one. Real PostgreSQL, real HTTP servers on loopback."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import socketserver
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.status import DeliveryStatus
from db.tables import WebhookDelivery
from scheduler.settings import WebhookSettings
from scheduler.webhooks import DeliveryLookups, dispatch_due
from tests.scheduler.conftest import Credentials
from tests.scheduler.receivers import Receiver

REBINDING_NAME = "rebind.catalogan.test"
PUBLIC_ADDRESS = "93.184.216.34"  # a global address; nothing here may ever connect to it successfully


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback that answers 200."""
    server = Receiver().start()
    yield server
    server.stop()


class RawServer:
    """A TCP server on loopback whose handler gets the connected socket after the request was read."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(30)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                with contextlib.suppress(OSError):  # the dispatcher hung up: what these tests want
                    answer(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """The hook URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _job(api: TestClient, tenant: Credentials, url: str) -> str:
    body = {"items": [{"category": "a", "count": 1}], "webhook_url": url}
    response = api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _outbox(
    factory: sessionmaker[Session], tenant: Credentials, job_id: str, url: str, count: int
) -> list[str]:
    ids = []
    with transaction(factory) as session:
        for index in range(count):
            ids.append(uuid.uuid4().hex)
            session.add(
                WebhookDelivery(
                    id=ids[-1],
                    tenant_id=tenant.tenant_id,
                    job_id=job_id,
                    event="job.progress",
                    url=url,
                    payload={"job_id": job_id, "n": index},
                )
            )
    return ids


def _wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _rows(factory: sessionmaker[Session], ids: list[str]) -> list[WebhookDelivery]:
    with factory() as session:
        rows = list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(ids))))
        session.expunge_all()
    return rows


def test_a_name_rebinding_to_loopback_after_the_check_receives_nothing(
    api: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a webhook host whose DNS answers a public address first and 127.0.0.1 afterwards (rebinding),
    and a receiver on 127.0.0.1 at the URL's port, when the dispatcher (private targets refused) delivers,
    then the loopback receiver gets no request and the row is not delivered."""
    job_id = _job(api, tenant, receiver.url)
    port = int(receiver.url.split(":")[2].split("/")[0])
    ids = _outbox(pg_factory, tenant, job_id, f"http://{REBINDING_NAME}:{port}/hooks", 1)
    real = socket.getaddrinfo
    answers = iter([PUBLIC_ADDRESS])

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == REBINDING_NAME:
            address = next(answers, "127.0.0.1")
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, args[0]))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    dispatch_due(pg_factory, WebhookSettings(webhook_timeout_seconds=1))

    assert receiver.deliveries == [], "a signed POST reached loopback through a rebinding name"
    (row,) = _rows(pg_factory, ids)
    assert row.status is DeliveryStatus.PENDING and row.attempts == 1 and row.last_error


def test_a_receiver_dripping_its_answer_is_cut_at_the_attempt_deadline(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given a receiver that sends its status line one byte every 0.3 s (14 s in all) and a 2 s deadline,
    when the dispatcher runs, then it returns within about the deadline and the row waits for a retry with
    an error saying no answer came in time."""

    def drip(conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n" + b"x-pad: " + b"." * 20:
            conn.sendall(bytes([byte]))
            time.sleep(0.3)

    server = RawServer(drip)
    try:
        ids = _outbox(pg_factory, tenant, _job(api, tenant, receiver.url), server.url, 1)
        settings = WebhookSettings(webhook_allow_private_targets=True, webhook_timeout_seconds=2)
        started = time.monotonic()
        dispatch_due(pg_factory, settings)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    # Well under the 14 s the drip lasts; the margin over the deadline is for a loaded machine
    assert elapsed < 6.0, f"one dripping receiver held the dispatcher {elapsed:.1f} s"
    (row,) = _rows(pg_factory, ids)
    assert row.status is DeliveryStatus.PENDING and "2 s" in (row.last_error or "")


def test_a_huge_answer_is_not_read_past_the_response_cap(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given a receiver that answers 200 with a 200 MB body, when the dispatcher delivers, then the row is
    delivered and the dispatcher's process allocated under 16 MiB of Python objects for it."""
    block = b"x" * (1 << 20)

    def huge(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (200 * len(block)))
        for _ in range(200):
            conn.sendall(block)

    server = RawServer(huge)
    try:
        ids = _outbox(pg_factory, tenant, _job(api, tenant, receiver.url), server.url, 1)
        settings = WebhookSettings(webhook_allow_private_targets=True, webhook_timeout_seconds=20)
        tracemalloc.start()
        try:
            dispatch_due(pg_factory, settings)
            peak = tracemalloc.get_traced_memory()[1] / (1 << 20)
        finally:
            tracemalloc.stop()
    finally:
        server.stop()
    (row,) = _rows(pg_factory, ids)
    assert row.status is DeliveryStatus.DELIVERED
    assert peak < 16, f"{peak:.0f} MiB allocated reading a receiver's answer"


def test_a_silent_receiver_delays_only_its_own_tenant(
    api: TestClient,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    receiver: Receiver,
) -> None:
    """Given tenant S with 6 due events for a receiver that never answers (queued first) and tenant F with 2
    for a prompt receiver, a 4 s deadline and 2 deliveries per tenant per tick, when one dispatch runs, then
    F's 2 events arrive well before S's deadline, the dispatch ends within about one deadline (not the 12 s of
    three rounds of S's), and only 2 of S's events were attempted (the other 4 wait for later ticks)."""
    silent = RawServer(lambda conn: time.sleep(30))
    s, f = make_tenant(), make_tenant()
    try:
        s_ids = _outbox(pg_factory, s, _job(api, s, receiver.url), silent.url, 6)
        f_ids = _outbox(pg_factory, f, _job(api, f, receiver.url), receiver.url, 2)
        settings = WebhookSettings(webhook_allow_private_targets=True, webhook_timeout_seconds=4)
        started = time.monotonic()
        done: dict[str, float] = {}
        thread = threading.Thread(
            target=lambda: (dispatch_due(pg_factory, settings), done.setdefault("at", time.monotonic()))
        )
        thread.start()
        while len(receiver.deliveries) < 2 and time.monotonic() - started < 30:
            time.sleep(0.02)
        fast_seconds = time.monotonic() - started
        thread.join(timeout=60)
    finally:
        silent.stop()
    assert len(receiver.deliveries) == 2
    assert fast_seconds < 2.5, f"tenant F's events waited {fast_seconds:.1f} s behind tenant S's receiver"
    assert done["at"] - started < 7.0
    attempted = [row for row in _rows(pg_factory, s_ids) if row.attempts]
    assert len(attempted) == 2
    assert all(row.status is DeliveryStatus.DELIVERED for row in _rows(pg_factory, f_ids))


SLOW_DNS_NAME = "slow-dns.catalogan.test"  # its tenant runs the DNS server that answers for it, slowly
FAST_DNS_NAME = "hooks.catalogan.test"


def test_a_tenant_whose_webhook_host_resolves_slowly_stalls_no_one_and_holds_one_lookup(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    api_store: Any,
    published: list[Any],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submit checks its webhook host's addresses (SSRF guard), so it must resolve the host a tenant chose.
    The lookup must not run on the event loop (every request would wait on the tenant's DNS server), must end
    in a 422 naming webhook_url after the configured time, and a tenant whose lookup still runs gets no
    second thread for another."""
    import httpx

    from scheduler.settings import ApiSettings
    from tests.scheduler.conftest import LiveServer, _app

    real_getaddrinfo = socket.getaddrinfo
    # The attacker's DNS server answers when the test says so, not after a fixed time: each step below must
    # happen while its lookup runs, and on a loaded machine a fixed delay could run out in the middle of them.
    slow_asked, slow_may_answer, slow_answered = threading.Event(), threading.Event(), threading.Event()

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == SLOW_DNS_NAME:
            slow_asked.set()
            slow_may_answer.wait(60)  # bounded: never leave a resolver thread behind for good
            slow_answered.set()
        if host in (SLOW_DNS_NAME, FAST_DNS_NAME):
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (PUBLIC_ADDRESS, 443))]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    webhooks = WebhookSettings(webhook_allow_private_targets=False, webhook_resolve_timeout_seconds=1.0)
    app = _app(pg_factory, api_store, published, tmp_path, ApiSettings(), webhooks)
    resolver = app.state.services.webhook_resolver  # its count of each tenant's lookups still running
    server = LiveServer(app).start()
    attacker, victim = make_tenant("attacker"), make_tenant("victim")

    def submit(who: Credentials, host: str) -> httpx.Response:
        body = {
            "model": "tiny@1",
            "items": [{"category": "a", "count": 1}],
            "webhook_url": f"https://{host}/h",
        }
        with httpx.Client(base_url=server.url, timeout=30) as client:
            return client.post("/v1/jobs", headers=who.headers, json=body)

    try:
        answers: list[httpx.Response] = []
        # Given the attacker's submit waiting on its DNS server
        attack = threading.Thread(target=lambda: answers.append(submit(attacker, SLOW_DNS_NAME)))
        attack.start()
        assert slow_asked.wait(30), "the attacker's submit never looked its webhook host up"
        # When others use the API meanwhile, then they are answered at once: the event loop is not waiting
        with httpx.Client(base_url=server.url, timeout=30) as client:
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            assert client.get("/v1/jobs", headers=victim.headers).status_code == 200
            assert time.monotonic() - started < 0.6
        victim_submit = submit(victim, FAST_DNS_NAME)
        assert victim_submit.status_code == 201, victim_submit.text
        # And a second submit of the attacker's while its lookup runs gets a 429, not another thread
        second = submit(attacker, FAST_DNS_NAME)
        assert second.status_code == 429 and "earlier lookup" in second.json()["detail"]
        # Then the attacker's submit is refused after the timeout, naming the field, before its DNS answered
        attack.join()
        assert answers[0].status_code == 422, answers[0].text
        assert answers[0].json()["errors"][0]["field"] == "webhook_url"
        assert "did not resolve within 1 s" in answers[0].json()["detail"]
        assert not slow_answered.is_set()
        # And once its lookup has returned, the attacker may submit again
        slow_may_answer.set()
        assert slow_answered.wait(5)
        # (the lookup's thread hands its end to the event loop, which counts it off: wait for that, not a time)
        _wait_until(lambda: attacker.tenant_id not in resolver.running, 30)
        assert submit(attacker, FAST_DNS_NAME).status_code == 201
    finally:
        slow_may_answer.set()
        server.stop()


def test_a_webhook_url_httpx_cannot_send_to_is_refused_at_submit(
    api: TestClient, tenant: Credentials
) -> None:
    """Given a webhook_url whose path carries a non-printable ASCII character (allowed by the URL pattern, kept
    by urllib, refused by httpx when it builds the request), when it is submitted, then it is a 422 naming
    webhook_url and no job is made."""
    response = api.post(
        "/v1/jobs",
        json={"items": [{"category": "a", "count": 1}], "webhook_url": "http://127.0.0.1:9/hooks\x01"},
        headers=tenant.headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "webhook_url"
    assert api.get("/v1/jobs", headers=tenant.headers).json()["data"] == []


def test_one_unsendable_outbox_row_fails_alone_and_others_are_delivered(
    api: TestClient,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    receiver: Receiver,
) -> None:
    """Given tenant S's due event for a URL httpx refuses to build a request for (written before submits
    checked it, or an operator's default) queued before tenant F's event for a prompt receiver, when one
    dispatch runs, then it returns normally, F's event is delivered, and S's row failed for good with an error
    naming the URL (before: the error escaped the dispatcher's task group, cancelled F's delivery, and S's
    row, never recorded, was claimed again by every later tick)."""
    s, f = make_tenant(), make_tenant()
    s_ids = _outbox(pg_factory, s, _job(api, s, receiver.url), f"{receiver.url}\x01x", 3)
    f_ids = _outbox(pg_factory, f, _job(api, f, receiver.url), receiver.url, 2)
    settings = WebhookSettings(webhook_allow_private_targets=True, webhook_timeout_seconds=4)
    report = dispatch_due(pg_factory, settings)
    assert all(row.status is DeliveryStatus.DELIVERED for row in _rows(pg_factory, f_ids))
    assert len(receiver.deliveries) == 2
    failed = [row for row in _rows(pg_factory, s_ids) if row.attempts]
    assert len(failed) == 2 and all(row.status is DeliveryStatus.FAILED for row in failed)
    assert all("not a URL" in (row.last_error or "") for row in failed)
    assert (report.delivered, report.failed) == (2, 2)


def test_a_webhook_host_that_fails_to_resolve_once_is_retried_not_given_up(
    api: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a due event whose host's DNS answers SERVFAIL-like "temporary failure" once, when the dispatcher
    runs, then the row waits for a retry (it is not failed for good: a DNS hiccup is not an unsafe target), and
    the next tick, with DNS answering again, delivers it."""
    port = int(receiver.url.split(":")[2].split("/")[0])
    ids = _outbox(
        pg_factory, tenant, _job(api, tenant, receiver.url), f"http://{FAST_DNS_NAME}:{port}/hooks", 1
    )
    real = socket.getaddrinfo
    failing = [True]

    def flaky(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == FAST_DNS_NAME:
            if failing[0]:
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", args[0]))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", flaky)
    settings = WebhookSettings(webhook_allow_private_targets=True, webhook_timeout_seconds=2)
    dispatch_due(pg_factory, settings)
    (row,) = _rows(pg_factory, ids)
    assert row.status is DeliveryStatus.PENDING and row.attempts == 1, (row.status, row.last_error)
    assert "does not resolve" in (row.last_error or "")

    failing[0] = False
    later = row.next_attempt_at + dt.timedelta(seconds=1)
    dispatch_due(pg_factory, settings, now=later)
    (row,) = _rows(pg_factory, ids)
    assert row.status is DeliveryStatus.DELIVERED and len(receiver.deliveries) == 1


def test_a_redirecting_receiver_is_a_failed_attempt_and_its_target_gets_nothing(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given a receiver that answers 307 with `Location` pointing at another receiver (a rebinding by redirect:
    the check saw only the first address), when the dispatcher delivers, then the second receiver gets no
    request and the row waits for a retry with the 307 as its error. (Pins behaviour that was already so.)"""

    def redirect(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 307 Temporary Redirect\r\nlocation: %s\r\ncontent-length: 0\r\n\r\n"
            % receiver.url.encode()
        )

    server = RawServer(redirect)
    try:
        ids = _outbox(pg_factory, tenant, _job(api, tenant, receiver.url), server.url, 1)
        dispatch_due(
            pg_factory, WebhookSettings(webhook_allow_private_targets=True, webhook_timeout_seconds=2)
        )
    finally:
        server.stop()
    assert receiver.deliveries == []
    (row,) = _rows(pg_factory, ids)
    assert row.status is DeliveryStatus.PENDING and "307" in (row.last_error or "")


def test_a_tenant_whose_webhook_host_resolves_slowly_at_delivery_holds_one_lookup_across_ticks(
    api: TestClient,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given tenant S whose webhook host's DNS server never answers within the 1 s attempt deadline (6 due
    events) and tenant F with a prompt receiver, when three dispatch ticks run (each takes 2 of S's events and
    one new event of F's), then S never has more than one lookup running (before: each tick left two
    abandoned lookup threads behind, six after three ticks), each of F's events is delivered in its tick, and
    each tick still ends within about one deadline."""
    real_getaddrinfo = socket.getaddrinfo
    lock, answer = threading.Lock(), threading.Event()
    in_lookup = {"now": 0, "most": 0}

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == SLOW_DNS_NAME:
            with lock:
                in_lookup["now"] += 1
                in_lookup["most"] = max(in_lookup["most"], in_lookup["now"])
            try:
                answer.wait(60)  # bounded: never leave a thread behind for good
            finally:
                with lock:
                    in_lookup["now"] -= 1
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (PUBLIC_ADDRESS, 443))]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    lookups = DeliveryLookups(threads=4)
    settings = WebhookSettings(
        webhook_allow_private_targets=True, webhook_timeout_seconds=1, webhook_concurrency_per_tenant=2
    )
    s, f = make_tenant(), make_tenant()
    slow_url = f"https://{SLOW_DNS_NAME}/hooks"
    try:
        s_ids = _outbox(pg_factory, s, _job(api, s, receiver.url), slow_url, 6)
        f_job = _job(api, f, receiver.url)
        tick_seconds, delivered = [], []
        for _ in range(3):
            f_ids = _outbox(pg_factory, f, f_job, receiver.url, 1)
            started = time.monotonic()
            dispatch_due(pg_factory, settings, lookups=lookups)
            tick_seconds.append(time.monotonic() - started)
            delivered.append(_rows(pg_factory, f_ids)[0].status)
        most = in_lookup["most"]
    finally:
        answer.set()
    _wait_until(lambda: not lookups.running, 30)
    assert most == 1, f"tenant S had {most} lookups running at once"
    assert delivered == [DeliveryStatus.DELIVERED] * 3
    assert all(seconds < 3.0 for seconds in tick_seconds), tick_seconds
    attempted = [row for row in _rows(pg_factory, s_ids) if row.attempts]
    assert len(attempted) == 6 and all(row.status is DeliveryStatus.PENDING for row in attempted)
