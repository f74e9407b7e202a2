"""A small loopback load test: concurrent submissions and status polling through the real HTTP API, with a
real worker; every job completes and no request fails. (`bench/bench_load.py` is the 200-client version.)"""

from __future__ import annotations

from pathlib import Path

from tests.faults.checks import assert_exactly_once
from tests.faults.load import load_tenant_headers, run_load, serve_api
from tests.pipeline import PipelineStack

SUBMISSIONS = 40
CONCURRENCY = 20


def test_forty_concurrent_clients_all_complete_without_errors(stack: PipelineStack, tmp_path: Path) -> None:
    # Given the API on loopback (PostgreSQL, Redis, S3) and one worker
    stack.start("worker")
    api = serve_api(stack.session_factory, stack.store, stack.redis_url, tmp_path / "api-data")
    tenant_id, headers = load_tenant_headers(stack.session_factory)
    try:
        # When 40 clients, 20 at a time, each submit a 3-image job and poll it until it finishes
        report = run_load(
            api.url,
            headers,
            submissions=SUBMISSIONS,
            concurrency=CONCURRENCY,
            job_body=lambda i: {"items": [{"category": "abc"[i % 3], "count": 3}], "seed": i},
            timeout_seconds=240,
        )
    finally:
        api.stop()
    print(report.summary())
    # Then no request failed and every job succeeded, each with exactly its 3 images
    assert report.errors == []
    assert len(report.submit_seconds) == SUBMISSIONS
    assert sorted(report.final_status.values()) == ["succeeded"] * SUBMISSIONS
    stack.tenant_id = tenant_id  # the jobs belong to the load tenant
    for job_id in report.final_status:
        assert_exactly_once(stack, job_id, 3)
