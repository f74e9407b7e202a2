"""One tenant, many concurrent submissions, more clients than database connections or API threads: every
request succeeds, every job completes with exactly its images.

Before the fix this failed two ways. Queued submits each held a pooled connection while they waited for the
tenant's row lock, so other requests waited out the pool timeout and got a 500. And sync routes
(`GET /v1/jobs/{id}`) kept their session's connection while they waited for a thread to serialize the
response, while every thread waited for a connection. The API's pool here gives up after 5 s instead of
SQLAlchemy's 30 s, so that a request stuck behind the others fails within the test's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_session_factory
from tests.faults.checks import assert_exactly_once
from tests.faults.load import load_tenant_headers, run_load, serve_api
from tests.pipeline import PipelineStack

SUBMISSIONS = 60
CONCURRENCY = 60  # all at once: more than the API's 40 threads and its 2 + 2 pooled connections
POOL_SIZE = 2  # overflow as many again: 4 connections (the production default is 5 + 5)
POOL_TIMEOUT_SECONDS = 5
IMAGES_PER_JOB = 1


@pytest.fixture
def api_session_factory(stack: PipelineStack) -> Iterator[sessionmaker[Session]]:
    """The API's own engine on the stack's database: a 2 + 2 connection pool, a 5 s pool timeout."""
    engine = create_engine(
        stack.engine.url,
        pool_size=POOL_SIZE,
        max_overflow=POOL_SIZE,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        pool_pre_ping=True,
    )
    yield make_session_factory(engine)
    engine.dispose()


def test_one_tenant_many_concurrent_submissions_all_complete_without_errors(
    stack: PipelineStack, api_session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    # Given the API on loopback with 2 + 2 pooled connections (PostgreSQL, Redis, S3), one worker, one tenant
    stack.start("worker")
    api = serve_api(api_session_factory, stack.store, stack.redis_url, tmp_path / "api-data")
    tenant_id, headers = load_tenant_headers(stack.session_factory)
    try:
        # When 60 clients of that tenant, all at once, each submit a job and poll it until it finishes
        report = run_load(
            api.url,
            headers,
            submissions=SUBMISSIONS,
            concurrency=CONCURRENCY,
            job_body=lambda i: {"items": [{"category": "abc"[i % 3], "count": IMAGES_PER_JOB}], "seed": i},
            timeout_seconds=180,
        )
    finally:
        api.stop()
    print(report.summary())
    # Then no request failed (no 5xx, no timeout) and every job succeeded with exactly its images
    assert report.errors == [], report.errors[:5]
    assert len(report.submit_seconds) == SUBMISSIONS
    assert sorted(report.final_status.values()) == ["succeeded"] * SUBMISSIONS
    stack.tenant_id = tenant_id  # the jobs belong to the load tenant
    for job_id in report.final_status:
        assert_exactly_once(stack, job_id, IMAGES_PER_JOB)
