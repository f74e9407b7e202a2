"""The object store failing: 20% of S3 requests fail and retries absorb it; 100% fails the job, boundedly."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from db.status import ChunkStatus, ImageStatus, JobStatus
from db.tables import Chunk, Image
from tests.faults.checks import assert_exactly_once
from tests.faults.services import FaultyHttpProxy
from tests.pipeline import PipelineStack


@pytest.fixture
def s3_proxy(s3_env: dict[str, str]) -> Iterator[FaultyHttpProxy]:
    """A fault-injecting relay in front of the test's SeaweedFS S3 gateway (no faults until a test sets some)."""
    proxy = FaultyHttpProxy(str(urlsplit(s3_env["AWS_ENDPOINT_URL"]).netloc), seed=7).start()
    yield proxy
    proxy.stop()


def test_twenty_percent_of_s3_requests_failing_is_absorbed_by_retries(
    stack: PipelineStack, s3_proxy: FaultyHttpProxy
) -> None:
    # Given a worker whose every S3 request (checkpoint read, image PUTs, manifest) fails 20% of the time
    s3_proxy.failure_rate = 0.2
    # The lease must outlast one batch's upload retries (botocore backs off up to ~15 s over 5 attempts):
    # 120 s in production; the stack's 3 s test lease would expire mid-backoff and burn attempts.
    stack.start("worker", AWS_ENDPOINT_URL=s3_proxy.url, CATALOGAN_LEASE_SECONDS="30")
    stack.start("beat")
    # When a 200-image job runs
    job_id = stack.submit({"items": [{"category": "a", "count": 200}], "chunk_size": 50, "seed": 41})
    stack.wait_terminal(job_id, timeout=180)
    # Then many requests failed, yet the job succeeded with every image exactly once
    assert s3_proxy.failed >= 20, (s3_proxy.failed, s3_proxy.forwarded)
    assert_exactly_once(stack, job_id, 200)


def test_every_image_upload_failing_fails_the_job_after_bounded_attempts(
    stack: PipelineStack, s3_proxy: FaultyHttpProxy
) -> None:
    # Given a worker (2 attempts per chunk) whose every image PUT fails; the manifest PUT still goes through
    s3_proxy.failure_rate = 1.0
    s3_proxy.pattern = re.compile(r"^PUT \S+\.png")
    # (30 s leases, as above: a 3 s lease would expire during the backoff and the reaper, not the worker,
    # would quarantine the chunk, recording "lease expired" instead of the storage error)
    stack.start(
        "worker", AWS_ENDPOINT_URL=s3_proxy.url, CATALOGAN_MAX_ATTEMPTS="2", CATALOGAN_LEASE_SECONDS="30"
    )
    stack.start("beat", CATALOGAN_MAX_ATTEMPTS="2")
    # When a 25-image job runs
    job_id = stack.submit({"items": [{"category": "b", "count": 25}], "chunk_size": 25, "seed": 42})
    job = stack.wait_terminal(job_id, timeout=180)
    # Then the job failed with its chunk quarantined after exactly 2 attempts, and no image object was stored
    assert (job.status, job.images_done, job.images_failed) == (JobStatus.FAILED, 0, 25)
    with stack.session_factory() as session:
        chunk = session.scalars(select(Chunk).where(Chunk.job_id == job_id)).one()
        rows = session.scalars(select(Image).where(Image.job_id == job_id)).all()
    assert (chunk.status, chunk.attempt) == (ChunkStatus.QUARANTINED, 2)
    assert stack.image_keys(job_id) == []
    # And rows = manifest lines = requested, each failed with the storage error
    assert sorted(row.index for row in rows) == list(range(25))
    assert all(row.status is ImageStatus.FAILED and "SlowDown" in str(row.error) for row in rows), [
        (row.status, row.error) for row in rows[:2]
    ]
    manifest = [json.loads(line) for line in stack.store.get(str(job.manifest_key)).decode().splitlines()]
    assert [entry["index"] for entry in manifest] == list(range(25))
    assert all(entry["status"] == "failed" and "SlowDown" in entry["error"] for entry in manifest)
