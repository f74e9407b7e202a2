"""End to end through the SDK: a real uvicorn server, a real `catalogan worker`, PostgreSQL, Redis, SeaweedFS.

Submit → wait → list images → the presigned URLs download bytes whose sha256 the rows hold; the manifest;
and a webhook receiver on loopback getting signed events the SDK verifies.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from db.status import ImageStatus
from db.tables import Image
from scheduler.client import Client, Job, verify_webhook
from scheduler.errors import ApiError, WebhookVerificationError
from scheduler.signatures import verify
from scheduler.webhooks import run_webhook_tick
from tests.scheduler.conftest import LiveStack
from tests.scheduler.receivers import Receiver

pytestmark = pytest.mark.slow

WAIT_SECONDS = 240
ITEMS = [{"category": "a", "count": 6, "sku": "SKU-1"}, {"category": "c", "count": 4}]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback."""
    server = Receiver().start()
    yield server
    server.stop()


def test_submit_wait_list_and_download_through_the_sdk(live_stack: LiveStack, tmp_path: Path) -> None:
    """Given a live stack, when a job is submitted and waited for through the SDK, then every image's
    presigned URL downloads the bytes whose sha256 its row holds, and the manifest lists them all."""
    seen: list[Job] = []
    with Client(live_stack.url, live_stack.tenant.api_key) as client:
        job = client.submit_job(ITEMS, seed=5, chunk_size=4, idempotency_key="e2e-1")
        done = client.wait(
            job, progress=seen.append, poll_seconds=0.3, max_poll_seconds=1.0, timeout_seconds=WAIT_SECONDS
        )
        assert done.status == "succeeded", (done, live_stack.worker.log()[-3000:])
        assert done.images_done == 10 and done.progress == 1.0 and seen[-1].status == "succeeded"

        images = list(client.iter_images(done, page_size=3))
        assert [image.index for image in images] == list(range(10))
        with live_stack.factory() as session:
            row_sha = dict(
                session.execute(select(Image.index, Image.sha256).where(Image.job_id == done.id)).all()
            )
        for image in images:
            assert image.url and image.url.startswith("http") and image.url_expires_at is not None
            data = httpx.get(image.url, timeout=30).content  # no API key: the URL alone grants access
            assert hashlib.sha256(data).hexdigest() == image.sha256 == row_sha[image.index]
            assert data.startswith(b"\x89PNG")

        saved = client.download(done, tmp_path / "out")
        assert len(saved) == 10 and (tmp_path / "out" / "SKU-1" / "00000000.png").exists()

        rows = client.manifest_rows(done)
        assert sorted(row["index"] for row in rows) == list(range(10))
        assert {row["sha256"] for row in rows} == {image.sha256 for image in images}

        replay = client.submit_job(ITEMS, seed=5, chunk_size=4, idempotency_key="e2e-1")
        assert replay.id == done.id and replay.replayed


def test_a_webhook_receiver_gets_signed_events_the_sdk_verifies(
    live_stack: LiveStack, receiver: Receiver
) -> None:
    """Given a job with a loopback webhook (allowed by the operator setting), when it runs and the dispatcher
    ticks, then the receiver gets job.started and job.completed, each verifying with the tenant's secret —
    and a tampered body or a stale timestamp fails verification."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            run_webhook_tick(live_stack.factory, live_stack.webhooks)
            stop.wait(0.2)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        with Client(live_stack.url, live_stack.tenant.api_key) as client:
            job = client.submit_job(ITEMS, seed=9, webhook_url=receiver.url)
            done = client.wait(job, poll_seconds=0.3, max_poll_seconds=1.0, timeout_seconds=WAIT_SECONDS)
        assert done.status == "succeeded", live_stack.worker.log()[-3000:]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            types = [json.loads(d.body)["type"] for d in receiver.deliveries]
            if "job.completed" in types:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        ticker.join(timeout=10)

    secret = live_stack.tenant.webhook_secret
    payloads = [verify_webhook(d.headers, d.body, secret) for d in receiver.deliveries]
    types = [p["type"] for p in payloads]
    assert types[0] == "job.started" and types.count("job.completed") == 1, types
    completed = next(p for p in payloads if p["type"] == "job.completed")
    assert completed["data"]["job_id"] == done.id and completed["data"]["images_done"] == 10

    delivery = receiver.deliveries[-1]
    with pytest.raises(WebhookVerificationError):
        verify_webhook(delivery.headers, delivery.body.replace(b"job", b"jab", 1), secret)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(
            delivery.headers, delivery.body, secret, now=time.time() + 301
        )  # the same delivery, replayed later


def test_a_cancelled_job_keeps_its_finished_images(live_stack: LiveStack) -> None:
    """Given a running job, when it is cancelled through the SDK, then it ends cancelled (or had already
    succeeded) and every image it reports has a row with a hash."""
    with Client(live_stack.url, live_stack.tenant.api_key) as client:
        job = client.submit_job([{"category": "b", "count": 64}], seed=3, chunk_size=4)
        client.cancel_job(job)
        done = client.wait(job, poll_seconds=0.3, max_poll_seconds=1.0, timeout_seconds=WAIT_SECONDS)
        assert done.status in ("cancelled", "succeeded")
        images = [image for image in client.iter_images(done) if image.status == ImageStatus.SUCCEEDED.value]
        assert len(images) == done.images_done and all(image.sha256 for image in images)
        with pytest.raises(ApiError) as error:
            client.retry_job(done)
        assert error.value.status == 409


def test_the_etl_example_writes_the_manifest_back_as_csv(live_stack: LiveStack, tmp_path: Path) -> None:
    """Given a catalog CSV where two of three SKUs lack an image, when docs/examples/etl_catalog.py runs,
    then its output CSV has one row per generated image for exactly those SKUs, and a rerun replays the job."""
    import csv
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "etl_catalog.py"
    spec = importlib.util.spec_from_file_location("etl_catalog", path)
    assert spec is not None and spec.loader is not None
    etl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(etl)
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        "sku,category,title,image_url\n"
        "SKU-1,a,Red sneaker,\n"
        "SKU-2,b,Blue dress,https://cdn.example/sku-2.jpg\n"
        "SKU-3,c,Grey coat,\n"
    )
    out = tmp_path / "images.csv"
    with Client(live_stack.url, live_stack.tenant.api_key) as client:
        job = etl.run(catalog, out, client=client, per_sku=2, seed=21)
        again = etl.run(catalog, tmp_path / "again.csv", client=client, per_sku=2, seed=21)
    rows = list(csv.DictReader(out.open()))
    assert sorted({row["sku"] for row in rows}) == ["SKU-1", "SKU-3"] and len(rows) == 4
    assert all(len(row["sha256"]) == 64 and row["status"] == "succeeded" for row in rows)
    assert again.id == job.id and (tmp_path / "again.csv").read_text() == out.read_text()
