"""Redis restarted mid-job (empty, on a private server): workers reconnect, the reaper republishes from SQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from db.storage import ObjectStore
from tests.faults.checks import assert_exactly_once
from tests.faults.services import RedisServer
from tests.pipeline import PipelineStack, ServiceProcess, wait_for

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
    back_at = dt.datetime.now(dt.UTC)
    done_at_restart = stack.job(job_id).images_done
    assert done_at_restart < IMAGES, "the job finished before the restart: make it longer"
    # Then the workers reconnect, the reaper republishes the lost chunks, and the job completes exactly
    stack.wait_terminal(job_id, timeout=180)
    assert_exactly_once(stack, job_id, IMAGES)
    # And both workers are back: each logged a reconnection or claimed a chunk since Redis returned (how a worker
    # notices the drop varies: a failed poll, the watchdog, or a silent reconnect by the ack of a running task)
    for worker in workers:
        wait_for(
            partial(reconnected_since, worker, back_at),
            timeout=60,
            what=f"{worker.log_path.name} to reconnect",
        )
    # And both consume again: each claims chunks of a new job (prefetch 1 with late acks, so a worker holds
    # no message beyond the one it runs; the "connected but idle" worker would claim none)
    second_at = dt.datetime.now(dt.UTC)
    second_id = stack.submit({"items": [{"category": "a", "count": 400}], "chunk_size": 20, "seed": 52})
    stack.wait_terminal(second_id, timeout=180)
    assert_exactly_once(stack, second_id, 400)
    for worker in workers:
        claims = [
            ts for ts, msg in log_records(worker.log()) if ts > second_at and msg.startswith("chunk claimed")
        ]
        assert claims, f"{worker.log_path.name} claimed no chunk of the job submitted after the restart"


def reconnected_since(worker: ServiceProcess, since: dt.datetime) -> bool:
    """Whether the worker logged a broker connection or claimed a chunk after `since`."""
    return any(
        ts > since and (msg.startswith("Connected to redis") or msg.startswith("chunk claimed"))
        for ts, msg in log_records(worker.log())
    )


def log_records(log: str) -> list[tuple[dt.datetime, str]]:
    """(time, message) of each JSON record in a worker's log (Celery's banner and warnings are skipped)."""
    records = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        ts = dt.datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        records.append((ts, record.get("msg", "")))
    return records
