"""Redis restarted mid-job (empty, on a private server): workers reconnect, the reaper republishes from SQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from db.storage import ObjectStore
from tests.faults.checks import assert_exactly_once
from tests.faults.services import RedisServer
from tests.pipeline import PipelineStack, wait_for

IMAGES = 800


@pytest.fixture
def redis_stack(
    pg_url: str, private_redis: RedisServer, s3_store: ObjectStore, s3_env: dict[str, str], tmp_path: Path
) -> Iterator[PipelineStack]:
    """The pipeline with its broker on the test's own redis-server (which the test restarts)."""
    pipeline = PipelineStack(
        db_url=pg_url, redis_url=private_redis.url, store=s3_store, s3_env=s3_env, folder=tmp_path
    )
    yield pipeline
    pipeline.close()


def test_workers_reconnect_after_redis_restarts_empty_mid_job(
    redis_stack: PipelineStack, private_redis: RedisServer
) -> None:
    stack = redis_stack
    # Given two workers and the reaper on a private Redis, with a job in progress
    workers = [stack.start("worker", "w1"), stack.start("worker", "w2")]
    stack.start("beat")
    job_id = stack.submit({"items": [{"category": "a", "count": IMAGES}], "chunk_size": 50, "seed": 51})
    wait_for(lambda: stack.job(job_id).images_done >= 100, timeout=120, what="some finished chunks")
    # When Redis goes away for 2 s and comes back empty (every queued and unacknowledged message lost)
    private_redis.restart(down_seconds=2)
    done_at_restart = stack.job(job_id).images_done
    assert done_at_restart < IMAGES, "the job finished before the restart: make it longer"
    # Then the workers reconnect, the reaper republishes the lost chunks, and the job completes exactly
    stack.wait_terminal(job_id, timeout=180)
    assert_exactly_once(stack, job_id, IMAGES)
    # And both workers were connected again and did work after the restart
    for worker in workers:
        log = worker.log()
        assert "Connection to broker lost" in log
        after = log[log.index("Connection to broker lost") :]
        assert "Connected to redis" in after
