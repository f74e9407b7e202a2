"""A worker frozen past its lease (SIGSTOP) is fenced out when it wakes up (SIGCONT)."""

from __future__ import annotations

import os
import signal
import time

from sqlalchemy import select, text

from db.status import ChunkStatus
from db.tables import Chunk, Image
from tests.faults.checks import assert_exactly_once
from tests.pipeline import PipelineStack, ServiceProcess, wait_for

IMAGES = 400


def _open_transactions(stack: PipelineStack) -> int:
    """Other backends of our database inside a transaction: idle in it, or still in a statement — a frozen
    pipelined INSERT shows as `active` waiting on its client — either way holding row locks."""
    with stack.engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                )
            ).scalar_one()
        )


def _freeze_outside_a_transaction(stack: PipelineStack, worker: ServiceProcess) -> None:
    # A worker frozen inside a transaction holds the chunk's row lock and would block its successor (as it
    # would in production until PostgreSQL's idle-in-transaction timeout); this test is about the lease, so
    # freeze it between transactions.
    for _ in range(50):
        os.kill(worker.process.pid, signal.SIGSTOP)
        time.sleep(0.2)
        if _open_transactions(stack) == 0:
            return
        os.kill(worker.process.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("could not freeze the worker outside a transaction")


def test_a_worker_frozen_past_its_lease_cannot_write_when_it_wakes(stack: PipelineStack) -> None:
    # Given one worker half-way through a single 400-image chunk (3 s leases), and the reaper
    frozen = stack.start("worker", "frozen")
    stack.start("beat")
    job_id = stack.submit({"items": [{"category": "a", "count": IMAGES}], "chunk_size": IMAGES, "seed": 21})
    with stack.session_factory() as session:
        chunk_id = session.scalars(select(Chunk.id).where(Chunk.job_id == job_id)).one()

    # (rows are written with the chunk's completion: its uploads show it is half-way)
    wait_for(lambda: len(stack.image_keys(job_id)) >= 50, timeout=120, what="the first batches")
    # When it is frozen (SIGSTOP) past its lease, and another worker takes the chunk over and finishes the job
    _freeze_outside_a_transaction(stack, frozen)
    stack.start("worker", "successor")
    job = stack.wait_terminal(job_id)
    with stack.session_factory() as session:
        chunk = session.get(Chunk, chunk_id)
        assert chunk is not None and chunk.attempt >= 2 and chunk.status is ChunkStatus.SUCCEEDED
        taken_over_by = chunk.attempt
    # And then the frozen worker wakes up (SIGCONT) with its batch still in hand
    os.kill(frozen.process.pid, signal.SIGCONT)
    wait_for(
        lambda: "stale attempt stopped" in frozen.log() or "chunk attempt failed" in frozen.log(),
        timeout=60,
        what="the woken worker to give up its stale attempt",
    )
    time.sleep(1)
    # Then its stale attempt was fenced: no row of attempt 1, counters counted the chunk once, exact outputs
    with stack.session_factory() as session:
        attempts = set(session.scalars(select(Image.attempt).where(Image.job_id == job_id)).all())
        chunk = session.get(Chunk, chunk_id)
        assert chunk is not None
        assert (chunk.status, chunk.attempt, chunk.images_done) == (
            ChunkStatus.SUCCEEDED,
            taken_over_by,
            IMAGES,
        )
    assert attempts == {taken_over_by}
    assert job.images_done == IMAGES
    assert_exactly_once(stack, job_id, IMAGES)
    assert '"attempt": 1' in frozen.log()
