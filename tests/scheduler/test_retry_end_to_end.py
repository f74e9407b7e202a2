"""`POST /v1/jobs/{id}/retry` end to end: a chunk that failed every attempt is quarantined, the job ends
`completed_with_failures` with the rest of its images delivered; after the cause is fixed, a retry through the SDK reruns only that chunk."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from db.engine import transaction
from db.messaging import CeleryPublisher, make_celery_app
from db.planning import JobSpec, submit_job
from db.settings import BrokerSettings, DataSettings
from db.tables import Job, ModelVersion
from scheduler.client import Client
from tests.scheduler.conftest import LiveStack

pytestmark = pytest.mark.slow

WAIT_SECONDS = 240


@pytest.fixture
def worker_overrides() -> dict[str, str]:
    """Fault injection on, two attempts per chunk, no wait between them."""
    return {"CATALOGAN_TEST_FAULTS": "1", "CATALOGAN_MAX_ATTEMPTS": "2", "CATALOGAN_RETRY_DELAY_SECONDS": "0"}


def test_retry_reruns_only_the_failed_images(live_stack: LiveStack, redis_url: str, tmp_path: Path) -> None:
    """Given a job whose chunk at index 4 always fails, when it ends, then it is failed with 4 of 8 images
    completed_with_failures (the SDK's wait returns it, terminal) with 4 of 8 images failed and 4 delivered;
    when the fault is removed and the job retried through the SDK, then it succeeds with all 8 images
    and the first chunk's images are the very same objects."""
    with live_stack.factory() as session:
        model = session.query(ModelVersion).one()
        session.expunge(model)
    spec = JobSpec(
        model="tiny",
        items=[{"category": "a", "count": 8}],  # type: ignore[list-item]
        chunk_size=4,
        seed=13,
        options={"test_fail_chunk_starts": [4]},
    )
    publisher = CeleryPublisher(
        make_celery_app(BrokerSettings(broker_url=redis_url), DataSettings(data_dir=tmp_path))
    )
    planned = submit_job(
        live_stack.factory,
        spec,
        tenant_id=live_stack.tenant.tenant_id,
        model_version=model,
        publisher=publisher,
    )
    with Client(live_stack.url, live_stack.tenant.api_key) as client:
        failed = client.wait(
            planned.job_id, poll_seconds=0.3, max_poll_seconds=1.0, timeout_seconds=WAIT_SECONDS
        )
        assert failed.status == "completed_with_failures", live_stack.worker.log()[-3000:]
        assert failed.is_terminal and failed.completed_with_failures
        assert (failed.images_done, failed.images_failed) == (4, 4)
        assert failed.error == "4 of 8 images failed"
        before = {image.index: image.sha256 for image in client.iter_images(failed) if image.sha256}

        with transaction(live_stack.factory) as session:  # the operator fixes the cause
            session.execute(update(Job).where(Job.id == failed.id).values(options={}))
        retried = client.retry_job(failed)
        assert retried.status == "queued" and retried.images_failed == 0
        done = client.wait(retried, poll_seconds=0.3, max_poll_seconds=1.0, timeout_seconds=WAIT_SECONDS)

        assert done.status == "succeeded", live_stack.worker.log()[-3000:]
        assert (done.images_done, done.images_failed) == (8, 0)
        after = {image.index: image.sha256 for image in client.iter_images(done)}
        assert sorted(after) == list(range(8))
        assert all(after[index] == sha for index, sha in before.items())
