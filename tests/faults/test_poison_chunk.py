"""A chunk that crashes every time is quarantined after N attempts while other jobs keep flowing."""

from __future__ import annotations

from sqlalchemy import select

from db.status import ChunkStatus, JobStatus
from db.tables import Chunk
from tests.faults.checks import assert_exactly_once
from tests.pipeline import PipelineStack


def test_a_poison_chunk_is_quarantined_while_another_job_completes(stack: PipelineStack) -> None:
    # Given a worker (3 attempts per chunk, fault injection on) and the reaper
    stack.start("worker")
    stack.start("beat")
    # When a job whose first chunk always crashes and a healthy job are submitted together
    poisoned = stack.submit(
        {
            "items": [{"category": "a", "count": 100}],
            "chunk_size": 50,
            "seed": 91,
            "options": {"test_fail_chunk_starts": [0]},
        }
    )
    healthy = stack.submit({"items": [{"category": "c", "count": 300}], "chunk_size": 50, "seed": 92})
    failed_job = stack.wait_terminal(poisoned)
    stack.wait_terminal(healthy)
    # Then the poisoned chunk is quarantined after 3 attempts and its job completes with failures, exact counts
    counts = (failed_job.status, failed_job.images_done, failed_job.images_failed)
    assert counts == (JobStatus.COMPLETED_WITH_FAILURES, 50, 50)
    with stack.session_factory() as session:
        chunk = session.scalars(select(Chunk).where(Chunk.job_id == poisoned, Chunk.start_index == 0)).one()
    assert (chunk.status, chunk.attempt) == (ChunkStatus.QUARANTINED, 3)
    assert len(stack.image_keys(poisoned)) == 50
    # And the healthy job completed with every image exactly once
    assert_exactly_once(stack, healthy, 300)
