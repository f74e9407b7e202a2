"""The generation pipeline end to end: real PostgreSQL, Redis, SeaweedFS and `catalogan worker` processes."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.engine import transaction
from db.jobs import request_cancel
from db.status import ChunkStatus, ImageStatus, JobStatus
from db.storage import ObjectStore
from db.tables import Chunk, Image
from tests.pipeline import PipelineStack, wait_for
from workers.verification import read_provenance

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def stack(
    pg_url: str, redis_url: str, s3_store: ObjectStore, s3_env: dict[str, str], tmp_path: Path
) -> Iterator[PipelineStack]:
    """PostgreSQL + Redis + SeaweedFS with a tiny model registered; processes are stopped afterwards."""
    pipeline = PipelineStack(
        db_url=pg_url, redis_url=redis_url, store=s3_store, s3_env=s3_env, folder=tmp_path
    )
    yield pipeline
    pipeline.close()


def _rows(stack: PipelineStack, job_id: str) -> dict[int, tuple[object, ...]]:
    with stack.session_factory() as session:
        images = session.scalars(select(Image).where(Image.job_id == job_id)).all()
        return {
            i.index: (i.key, i.sha256, i.size_bytes, i.status, i.attempt, i.created_at, i.chunk_id)
            for i in images
        }


def _leased_chunk(stack: PipelineStack, job_id: str) -> int | None:
    with stack.session_factory() as session:
        return session.scalars(
            select(Chunk.id).where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.LEASED)
        ).first()


def _count_rows(stack: PipelineStack, job_id: str) -> int:
    with stack.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id)) or 0)


def _assert_complete_and_exact(stack: PipelineStack, job_id: str, total: int) -> None:
    """Exactly `total` objects and `total` succeeded rows, one per index, whose sha256 match the bytes."""
    keys = stack.image_keys(job_id)
    rows = _rows(stack, job_id)
    assert len(keys) == total and len(set(keys)) == total
    assert sorted(rows) == list(range(total))
    assert {row[0] for row in rows.values()} == set(keys)
    for key, sha, size, status, *_ in rows.values():
        assert status is ImageStatus.SUCCEEDED
        data = stack.store.get(str(key))
        assert hashlib.sha256(data).hexdigest() == sha and len(data) == size


def test_a_2000_image_job_over_three_categories_succeeds_exactly(stack: PipelineStack) -> None:
    # Given a worker and the reaper running
    stack.start("worker")
    stack.start("beat")
    # When a 2,000-image job over three categories is submitted
    job_id = stack.submit(
        {
            "items": [
                {"category": "a", "count": 700},
                {"category": "b", "count": 700},
                {"category": "c", "count": 600},
            ],
            "chunk_size": 250,
            "seed": 11,
        }
    )
    job = stack.wait_terminal(job_id)
    # Then it succeeded with exactly 2,000 objects and 2,000 rows whose sha256 match the bytes
    assert (job.status, job.images_done, job.images_failed) == (JobStatus.SUCCEEDED, 2000, 0)
    _assert_complete_and_exact(stack, job_id, 2000)
    # And the manifest lists all 2,000, with the rows' hashes
    manifest = [json.loads(line) for line in stack.store.get(str(job.manifest_key)).decode().splitlines()]
    rows = _rows(stack, job_id)
    assert [entry["index"] for entry in manifest] == list(range(2000))
    assert all(
        entry["sha256"] == rows[entry["index"]][1] and entry["status"] == "succeeded" for entry in manifest
    )
    assert {entry["category"] for entry in manifest} == {"a", "b", "c"}
    # And a CPU worker at its default backend and graph (`auto`) computed them with onnxruntime on the folded
    # graph, and says so in the file
    first = read_provenance(stack.store.get(str(rows[0][0])))
    assert dict(first.provenance.inference)["backend"] == "onnxruntime"
    assert dict(first.provenance.inference)["graph"] == "folded"


def test_redelivering_finished_chunks_changes_no_byte_and_no_row(stack: PipelineStack) -> None:
    # Given a finished job
    worker = stack.start("worker")
    job_id = stack.submit({"items": [{"category": "b", "count": 120}], "chunk_size": 40, "seed": 3})
    stack.wait_terminal(job_id)
    rows_before = _rows(stack, job_id)
    bytes_before = {key: stack.store.get(key) for key in stack.image_keys(job_id)}
    with stack.session_factory() as session:
        chunk_ids = session.scalars(select(Chunk.id).where(Chunk.job_id == job_id)).all()
    # When every chunk's message is delivered again
    stack.publisher("bulk", chunk_ids)
    wait_for(
        lambda: worker.log().count("chunk not claimable") >= len(chunk_ids), timeout=60, what="redeliveries"
    )
    # Then every byte and every row is unchanged
    assert _rows(stack, job_id) == rows_before
    assert {key: stack.store.get(key) for key in stack.image_keys(job_id)} == bytes_before


def test_kill_9_of_the_worker_mid_job_loses_and_duplicates_nothing(stack: PipelineStack) -> None:
    # Given a job in progress on one worker, with the reaper running
    first = stack.start("worker", "first")
    stack.start("beat")
    job_id = stack.submit(
        {
            "items": [{"category": "a", "count": 600}, {"category": "c", "count": 400}],
            "chunk_size": 100,
            "seed": 5,
        }
    )
    wait_for(lambda: stack.job(job_id).images_done >= 200, timeout=120, what="some finished chunks")
    # When the worker is killed with SIGKILL mid-chunk (frozen while the test reads which chunk it holds)
    # and a new worker starts
    interrupted = first.kill9_while(lambda: _leased_chunk(stack, job_id))
    stack.start("worker", "second")
    job = stack.wait_terminal(job_id)
    # Then the job completes with 0 lost and 0 duplicated images
    assert (job.status, job.images_done, job.images_failed) == (JobStatus.SUCCEEDED, 1000, 0)
    _assert_complete_and_exact(stack, job_id, 1000)
    with stack.session_factory() as session:  # the interrupted chunk was redone by a second attempt
        assert session.get(Chunk, interrupted).attempt == 2  # type: ignore[union-attr]


def test_cancel_mid_job_keeps_finished_images_and_adds_none(stack: PipelineStack) -> None:
    # Given a job in progress
    stack.start("worker")
    stack.start("beat")
    job_id = stack.submit({"items": [{"category": "b", "count": 2000}], "chunk_size": 100, "seed": 8})
    wait_for(lambda: stack.job(job_id).images_done >= 100, timeout=120, what="a finished chunk")
    # When it is cancelled
    with transaction(stack.session_factory) as session:
        request_cancel(session, job_id)
    job = stack.wait_terminal(job_id, timeout=60)
    # Then it ends cancelled, the images finished so far stay (rows = objects = done), and no new ones appear
    assert job.status is JobStatus.CANCELLED
    rows, keys = _count_rows(stack, job_id), len(stack.image_keys(job_id))
    assert 100 <= rows < 2000 and rows == keys == job.images_done
    time.sleep(3)
    assert _count_rows(stack, job_id) == rows and len(stack.image_keys(job_id)) == keys


def test_a_chunk_that_always_fails_is_quarantined_and_the_rest_completes(stack: PipelineStack) -> None:
    # Given workers with fault injection enabled (CATALOGAN_TEST_FAULTS=1, 3 attempts) and the reaper
    stack.start("worker")
    stack.start("beat")
    # When a job's chunk starting at index 100 fails on every attempt
    job_id = stack.submit(
        {
            "items": [{"category": "a", "count": 400}],
            "chunk_size": 100,
            "seed": 2,
            "options": {"test_fail_chunk_starts": [100]},
        }
    )
    job = stack.wait_terminal(job_id)
    # Then that chunk is quarantined after 3 attempts, the other chunks completed, and the counts are exact
    assert (job.status, job.images_done, job.images_failed) == (JobStatus.COMPLETED_WITH_FAILURES, 300, 100)
    assert job.error == "100 of 400 images failed"
    with stack.session_factory() as session:
        chunk = session.scalars(select(Chunk).where(Chunk.job_id == job_id, Chunk.start_index == 100)).one()
        assert (chunk.status, chunk.attempt) == (ChunkStatus.QUARANTINED, 3)
        failed = session.scalars(
            select(Image).where(Image.job_id == job_id, Image.status == ImageStatus.FAILED)
        ).all()
    assert sorted(image.index for image in failed) == list(range(100, 200))
    assert all("injected fault" in str(image.error) for image in failed)
    assert len(stack.image_keys(job_id)) == 300
    manifest = [json.loads(line) for line in stack.store.get(str(job.manifest_key)).decode().splitlines()]
    assert len(manifest) == 400 and sum(entry["status"] == "failed" for entry in manifest) == 100


def test_sigterm_releases_the_running_chunk_at_once(stack: PipelineStack) -> None:
    # Given a worker in the middle of one long chunk (2,000 images in batches of 25)
    first = stack.start("worker", "first")
    job_id = stack.submit({"items": [{"category": "a", "count": 2000}], "chunk_size": 2000, "seed": 9})
    # (rows are written per chunk: the uploads show the chunk is under way)
    wait_for(lambda: len(stack.image_keys(job_id)) >= 50, timeout=120, what="the first batches")
    # When it receives SIGTERM
    started = time.monotonic()
    assert first.stop(timeout=30) == 0
    # Then it exits promptly, having released the chunk (no waiting for the lease to expire)
    assert time.monotonic() - started < 25  # a 3 s lease; the stop timeout is 30 s
    with stack.session_factory() as session:
        chunk = session.scalars(select(Chunk).where(Chunk.job_id == job_id)).one()
        assert (chunk.status, chunk.attempt, chunk.last_error) == (
            ChunkStatus.PENDING,
            1,
            "released at worker shutdown",
        )
    # And the images it uploaded before stopping got their rows (finished images stay)
    assert 50 <= _count_rows(stack, job_id) < 2000
    # And a new worker picks the republished chunk up and completes the job exactly
    stack.start("worker", "second")
    job = stack.wait_terminal(job_id)
    assert (job.status, job.images_done) == (JobStatus.SUCCEEDED, 2000)
    _assert_complete_and_exact(stack, job_id, 2000)


def test_catalogan_workers_lists_an_idle_worker_that_answers_a_ping(stack: PipelineStack) -> None:
    """Given a `catalogan worker` on Redis with nothing to do, when an operator runs `catalogan workers --json`,
    then the idle worker is listed as answering a ping (it holds no lease, so SQL alone could not show it)."""
    import json
    import subprocess
    import sys

    worker = stack.start("worker", name="idle")
    seen: list[dict[str, object]] = []

    def listed() -> bool:
        result = subprocess.run(
            [sys.executable, "-c", "from scheduler.cli import main; main()", "workers", "--json"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        seen[:] = json.loads(result.stdout)["workers"]
        return bool(seen)

    try:
        wait_for(listed, timeout=90, interval=1, what="the idle worker to answer a ping")
    finally:
        worker.stop()
    assert [row["ping"] for row in seen] == ["ok"]
    assert not seen[0]["chunks"]
