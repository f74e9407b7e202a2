"""Another tenant's small job is not stuck behind a large one: real worker, Redis, PostgreSQL, SeaweedFS.

Before the per-tenant publish window (`db.publish_window`), every chunk of a job was published at submit and
the queue is first in, first out: a 10-image job submitted right after another tenant's 200-chunk job ran
after all 200 of them (`bench/bench_fairness.py` measured 1.8 s alone, 102 s behind 100,000 images).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.planning import parse_job_spec, submit_job
from db.status import JobStatus
from db.storage import ObjectStore
from db.tables import Image
from tests.pipeline import PipelineStack, make_tenant, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW = "2"


@pytest.fixture
def stack(
    pg_url: str,
    redis_url: str,
    s3_store: ObjectStore,
    s3_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[PipelineStack]:
    """The pipeline with a publish window of 2 chunks, in this process (submits) and in its workers."""
    monkeypatch.setenv("CATALOGAN_PUBLISH_WINDOW_CHUNKS", WINDOW)
    pipeline = PipelineStack(
        db_url=pg_url, redis_url=redis_url, store=s3_store, s3_env=s3_env, folder=tmp_path
    )
    yield pipeline
    pipeline.close()


def test_another_tenants_small_job_finishes_while_a_large_job_has_most_of_its_chunks_left(
    stack: PipelineStack,
) -> None:
    # Given one worker and the reaper, and tenant A's 200-chunk job submitted first
    stack.start("worker", CATALOGAN_PUBLISH_WINDOW_CHUNKS=WINDOW)
    stack.start("beat", CATALOGAN_PUBLISH_WINDOW_CHUNKS=WINDOW)
    large = stack.submit({"items": [{"category": "a", "count": 20_000}], "chunk_size": 100, "seed": 1})
    wait_for(lambda: stack.job(large).chunks_finished >= 1, timeout=120, what="A's first chunk")
    # When tenant B submits a 10-image job
    other = make_tenant(stack.session_factory, "other")
    small = submit_job(
        stack.session_factory,
        parse_job_spec({"model": "tiny", "items": [{"category": "b", "count": 10}], "seed": 2}),
        tenant_id=other,
        model_version=stack.model_version,
        publisher=stack.publisher,
    ).job_id
    # Then B's job succeeds while A's still has most of its 200 chunks to run (before: after all of them)
    assert stack.wait_terminal(small).status is JobStatus.SUCCEEDED
    assert stack.job(large).chunks_finished < 100, stack.job(large).chunks_finished
    # And A's job, fed two chunks at a time, still completes exactly: 20,000 images, one row each
    job = stack.wait_terminal(large, timeout=600)
    assert (job.status, job.images_done) == (JobStatus.SUCCEEDED, 20_000)
    with stack.session_factory() as session:
        rows = session.scalar(select(func.count()).select_from(Image).where(Image.job_id == large))
    assert rows == 20_000
