"""The SDK's bounds against a hostile or broken peer: how much of an answer it reads, and how `wait` polls.

Sizes: a real HTTP server on loopback streams bodies far larger than anything the API or the store sends (no
`content-length`, so only the reader can stop them); the SDK must stop reading at its cap, not hold the body.
`wait`: a scripted transport and a fake clock, so minutes of polling take no time.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

import scheduler.client.connection as client_connection
import scheduler.client.jobs as client_jobs
from scheduler.client import Client
from scheduler.errors import ApiError, ClientError

MIB = 1 << 20
PNG = b"\x89PNG\r\n\x1a\n" + b"p" * 1000


class FloodingPeer:
    """Answers `GET /v1/jobs/<id>/images` with one row whose URL is `/bytes`, `/bytes` with `image_mib` MiB
    (chunked, never announced), and any other GET with `flood_mib` MiB of JSON-looking bytes (chunked)."""

    def __init__(self, *, flood_mib: int = 0, image_mib: int = 0) -> None:
        self.sent = 0  # bytes of body written, as far as the client read them
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.startswith("/v1/jobs/j/images"):
                    body = json.dumps({"data": [peer.row()], "next_cursor": None}).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                mib = image_mib if self.path == "/bytes" else flood_mib
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                block = b"[" + b" " * (MIB - 1) if self.path != "/bytes" else PNG[:8] + b"x" * (MIB - 8)
                try:
                    for _ in range(mib):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                        peer.sent += len(block)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client hung up: what the bounded reads do
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def row(self) -> dict[str, Any]:
        """A succeeded image of 1,008 bytes whose URL serves a flood instead."""
        return {
            "index": 0,
            "category": "a",
            "sku": None,
            "status": "succeeded",
            "key": "t/jobs/j/a/00000000.png",
            "sha256": hashlib.sha256(PNG).hexdigest(),
            "size_bytes": len(PNG),
            "url": f"{self.url}/bytes",
            "url_expires_at": None,
            "error": None,
        }

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flooding_peer(request: pytest.FixtureRequest) -> Iterator[FloodingPeer]:
    """A `FloodingPeer` with the sizes the test passes (indirect parametrization)."""
    peer = FloodingPeer(**request.param)
    yield peer
    peer.stop()


@pytest.mark.parametrize("flooding_peer", [{"flood_mib": 160}], indirect=True)
def test_an_api_answer_over_the_cap_is_refused_without_holding_it(flooding_peer: FloodingPeer) -> None:
    """Given an API that answers `GET /v1/jobs/j1` with 160 MiB (no content-length), when the SDK gets the job,
    then a ClientError names the cap, and the SDK allocated a fraction of the answer (before: it read all 160
    MiB into memory, about twice over, and then failed to parse it)."""
    tracemalloc.start()
    try:
        with (
            Client(flooding_peer.url, api_key="cg_x_y", max_retries=0) as client,
            pytest.raises(ClientError, match="over"),
        ):
            client.get_job("j1")
        peak = tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()
    assert peak < 40, f"{peak:.0f} MiB allocated reading one oversized API answer"


@pytest.mark.parametrize("flooding_peer", [{"image_mib": 64}], indirect=True)
def test_an_image_url_serving_more_than_the_images_size_is_cut_at_that_size(
    flooding_peer: FloodingPeer, tmp_path: Path
) -> None:
    """Given an image row of 1,008 bytes whose URL streams 64 MiB, when downloading the job, then a ClientError
    says the object is larger than the listing said, under 8 MiB were allocated (two clients with their TLS
    contexts take about 2), nothing was written, and the
    peer could not push much more than the image's size (before: 64 MiB were read and held, then the sha256
    check failed)."""
    target = tmp_path / "out"
    tracemalloc.start()
    try:
        with (
            Client(flooding_peer.url, api_key="cg_x_y", max_retries=0) as client,
            pytest.raises(ClientError, match="larger"),
        ):
            client.download("j", target)
        peak = tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()
    assert peak < 8, f"{peak:.1f} MiB allocated downloading a 1,008-byte image"  # clients and TLS context: ~2
    assert not target.exists() or not any(target.rglob("*.png"))


# --- wait ----------------------------------------------------------------------------------------------------


JOB = {
    "id": "j1",
    "status": "running",
    "model": {"name": "tiny", "version": 1},
    "seed": 1,
    "counts": {"images_total": 2},
    "progress": 0.5,
}


class FakeClock:
    """`time.monotonic` and `sleep` for the SDK: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The fake now."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Record and advance."""
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock the SDK modules read (`time.monotonic`: the retry deadline in `connection`, `wait` in
    `jobs`); pass `clock.sleep` as the client's sleep."""
    fake = FakeClock()
    for module in (client_connection, client_jobs):
        monkeypatch.setattr(
            module, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep, time=time.time)
        )
    return fake


def _answers(script: list[httpx.Response]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return script.pop(0) if len(script) > 1 else script[0]

    return httpx.MockTransport(handler)


def test_wait_backs_off_between_polls_up_to_a_cap(clock: FakeClock) -> None:
    """Given a job that stays running for an hour of polls, when waiting, then the pause between polls grows
    from `poll_seconds` to `max_poll_seconds` (15 s) and stays there: an hour costs about 250 requests, not
    3,600 (before: a poll every second)."""
    polls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        polls.append(clock.now)
        status = "succeeded" if clock.now - 1000.0 >= 3600 else "running"
        return httpx.Response(200, json={**JOB, "status": status})

    with Client("http://api", "cg_k", transport=httpx.MockTransport(handler), sleep=clock.sleep) as client:
        job = client.wait("j1", poll_seconds=1.0)
    assert job.status == "succeeded"
    assert clock.sleeps[0] == 1.0 and clock.sleeps == sorted(clock.sleeps)
    assert max(clock.sleeps) == 15.0
    assert len(polls) < 260, f"{len(polls)} polls in an hour"


def test_wait_keeps_a_poll_interval_longer_than_the_cap(clock: FakeClock) -> None:
    """Given `poll_seconds=60` (over the 15 s cap), when waiting, then every pause is 60 s (never shortened)."""
    script = [httpx.Response(200, json=JOB)] * 4 + [httpx.Response(200, json={**JOB, "status": "failed"})]
    with Client("http://api", "cg_k", transport=_answers(script), sleep=clock.sleep) as client:
        assert client.wait("j1", poll_seconds=60).status == "failed"
    assert clock.sleeps == [60.0] * 4


def test_jobs_watch_polls_at_its_interval_without_backing_off(clock: FakeClock) -> None:
    """`catalogan jobs watch --interval 2`: an operator watching a job sees each change within 2 s, so the
    SDK's backoff is capped at the interval (the SDK's default would stretch it to 15 s)."""
    from scheduler.cli.jobs import follow

    script = [httpx.Response(200, json=JOB)] * 8 + [httpx.Response(200, json={**JOB, "status": "succeeded"})]
    with Client("http://api", "cg_k", transport=_answers(script), sleep=clock.sleep) as client:
        assert follow(client, "j1", 2.0).status == "succeeded"
    assert clock.sleeps == [2.0] * 8


def test_wait_keeps_waiting_through_429s_honouring_a_capped_retry_after(clock: FakeClock) -> None:
    """Given an API that rate-limits the poll eight times in a row (Retry-After: 3600), then answers the job
    finished, when waiting, then `wait` returns the job (before: `ApiError` 429 after the fifth retry), and
    no pause exceeded the Retry-After cap of 120 s."""
    limited = httpx.Response(429, headers={"Retry-After": "3600"}, json={"status": 429})
    script = [limited] * 8 + [httpx.Response(200, json={**JOB, "status": "succeeded"})]
    with Client("http://api", "cg_k", transport=_answers(script), sleep=clock.sleep) as client:
        job = client.wait("j1")
    assert job.status == "succeeded"
    assert len(clock.sleeps) == 8 and max(clock.sleeps) <= 120.0


def test_wait_never_sleeps_past_its_timeout(clock: FakeClock) -> None:
    """Given a poll answered 429 with Retry-After: 100 and `timeout_seconds=10`, when waiting, then a ClientError
    says the job is not finished after 10 s, and the SDK slept no more than the 10 s it was given (before: it
    slept 5 x 100 s and raised the 429)."""
    limited = httpx.Response(429, headers={"Retry-After": "100"}, json={"status": 429})
    with (
        Client("http://api", "cg_k", transport=_answers([limited]), sleep=clock.sleep) as client,
        pytest.raises(ClientError, match="after 10") as error,
    ):
        client.wait("j1", timeout_seconds=10)
    assert not isinstance(error.value, ApiError)
    assert sum(clock.sleeps) <= 10.0


def test_an_http_date_retry_after_is_honoured_and_capped(clock: FakeClock) -> None:
    """Given a 503 whose Retry-After is an HTTP date 20 s ahead, when getting a job, then the SDK waits about
    20 s (before: it ignored the date and retried after 0.5 s); a date a day ahead waits the 120 s cap."""
    import datetime as dt
    from email.utils import format_datetime

    def date_in(seconds: int) -> str:
        return format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds), usegmt=True)

    script = [
        httpx.Response(503, headers={"Retry-After": date_in(20)}),
        httpx.Response(503, headers={"Retry-After": date_in(86400)}),
        httpx.Response(200, json=JOB),
    ]
    with Client("http://api", "cg_k", transport=_answers(script), sleep=clock.sleep) as client:
        client.get_job("j1")
    assert 18 <= clock.sleeps[0] <= 21 and clock.sleeps[1] == 120.0
