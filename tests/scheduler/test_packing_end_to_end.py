"""Packed chunks end to end (issue 12 finding 8): one-image SKU lines share chunks on the real stack (API,
`catalogan worker`, PostgreSQL, Redis, S3), and a packed chunk that fails and is retried keeps every image
under its own SKU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from db.engine import transaction
from db.messaging import CeleryPublisher, make_celery_app
from db.planning import parse_job_spec, submit_job
from db.settings import BrokerSettings, DataSettings
from db.tables import Job, ModelVersion
from scheduler.client import Client
from tests.scheduler.conftest import LiveStack

pytestmark = pytest.mark.slow

WAIT_SECONDS = 240
CATEGORIES = ("a", "b", "c")
ITEMS: list[dict[str, Any]] = [
    {"category": CATEGORIES[n % 3], "sku": f"SKU-{n:03d}", "count": 1} for n in range(40)
]


@pytest.fixture
def worker_overrides() -> dict[str, str]:
    """Fault injection on, two attempts per chunk, no wait between them."""
    return {"CATALOGAN_TEST_FAULTS": "1", "CATALOGAN_MAX_ATTEMPTS": "2", "CATALOGAN_RETRY_DELAY_SECONDS": "0"}


def _expected(rows: list[dict[str, Any]], tenant_id: str, job_id: str) -> None:
    """Every manifest row carries its own item's SKU and category, and its key the SKU folder."""
    assert [row["index"] for row in rows] == list(range(len(ITEMS)))
    for row, item in zip(rows, ITEMS, strict=True):
        assert (row["sku"], row["category"], row["status"]) == (item["sku"], item["category"], "succeeded")
        assert row["key"].endswith(f"{tenant_id}/jobs/{job_id}/{item['sku']}/{row['index']:08d}.png")


def test_one_image_skus_share_chunks_and_a_failed_packed_chunk_is_retried_under_each_sku(
    live_stack: LiveStack, redis_url: str, tmp_path: Path
) -> None:
    """Given 40 one-image SKU lines at 16 a chunk, when submitted over HTTP, then the job has 3 chunks (not 40)
    and its manifest lists each image under its own SKU and category. Given the same lines as a job whose
    chunk at index 16 always fails, when it ends, then its 16 failed rows carry their own SKUs; after the
    fault is removed, a retry delivers them under the same SKU keys."""
    tenant_id = live_stack.tenant.tenant_id
    with Client(live_stack.url, live_stack.tenant.api_key) as client:
        job = client.submit_job(ITEMS, model="tiny", seed=3, chunk_size=16)
        assert job.chunks_total == 3
        done = client.wait(job, poll_seconds=0.3, max_poll_seconds=1.0, timeout_seconds=WAIT_SECONDS)
        assert (done.status, done.images_done) == ("succeeded", 40), live_stack.worker.log()[-3000:]
        first = client.manifest_rows(done)
        _expected(first, tenant_id, done.id)

        with live_stack.factory() as session:
            model = session.query(ModelVersion).one()
            session.expunge(model)
        publisher = CeleryPublisher(
            make_celery_app(BrokerSettings(broker_url=redis_url), DataSettings(data_dir=tmp_path))
        )
        spec = {"items": ITEMS, "seed": 3, "chunk_size": 16, "options": {"test_fail_chunk_starts": [16]}}
        planned = submit_job(
            live_stack.factory,
            parse_job_spec(spec),
            tenant_id=tenant_id,
            model_version=model,
            publisher=publisher,
        )
        failed = client.wait(
            planned.job_id, poll_seconds=0.3, max_poll_seconds=1.0, timeout_seconds=WAIT_SECONDS
        )
        assert (failed.status, failed.images_done, failed.images_failed) == (
            "completed_with_failures",
            24,
            16,
        )
        failed_rows = [image for image in client.iter_images(failed) if image.status == "failed"]
        assert [(image.index, image.sku, image.category) for image in failed_rows] == [
            (index, ITEMS[index]["sku"], ITEMS[index]["category"]) for index in range(16, 32)
        ]

        with transaction(live_stack.factory) as session:  # the operator fixes the cause
            session.execute(update(Job).where(Job.id == failed.id).values(options={}))
        client.retry_job(failed)
        retried = client.wait(failed.id, poll_seconds=0.3, max_poll_seconds=1.0, timeout_seconds=WAIT_SECONDS)
        assert (retried.status, retried.images_done) == ("succeeded", 40), live_stack.worker.log()[-3000:]
        _expected(client.manifest_rows(retried), tenant_id, retried.id)
