"""Ending a chunk other than by success: quarantine (after N attempts) or cancel — with accurate counters.

Both the worker and the reaper call these, each in one transaction: the chunk's status, its image rows
and the job counters change together, so `chunks_finished` reaches `chunks_total` exactly once per job.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.chunks import cancel_chunk, mark_quarantined
from db.images import count_chunk_images, write_failed_images
from db.jobs import JobProgress, bump_job_counters
from db.status import ChunkStatus, ImageStatus
from db.tables import Chunk, JobItem


def quarantine_chunk(
    session: Session, chunk_id: int, *, error: str, attempt: int | None = None
) -> JobProgress | None:
    """Quarantine a pending or leased chunk: failed rows for its unfinished images, counters bumped.

    Fenced by `attempt` when given. Returns the job's progress, or None when the chunk was already
    finished (or another attempt holds it) and nothing changed.
    """
    chunk = session.get(Chunk, chunk_id)
    if chunk is None or not mark_quarantined(session, chunk_id, error=error, attempt=attempt):
        return None
    item = session.get(JobItem, chunk.item_id)
    assert item is not None  # a chunk always belongs to an item (FK)
    write_failed_images(
        session,
        job_id=chunk.job_id,
        chunk_id=chunk.id,
        item=item,
        start=chunk.start_index,
        stop=chunk.stop_index,
        attempt=chunk.attempt,
        error=error,
    )
    done = count_chunk_images(
        session, chunk.job_id, chunk.start_index, chunk.stop_index, ImageStatus.SUCCEEDED
    )
    failed = (chunk.stop_index - chunk.start_index) - done
    _record_counts(session, chunk, done=done, failed=failed)
    return bump_job_counters(session, chunk.job_id, done=done, failed=failed)


def cancel_chunk_counted(
    session: Session, chunk_id: int, *, attempt: int | None = None
) -> JobProgress | None:
    """Cancel a pending or leased chunk; images it already finished stay and count as done.

    Fenced by `attempt` when given. Returns the job's progress, or None when nothing changed.
    """
    chunk = session.get(Chunk, chunk_id)
    if chunk is None or not cancel_chunk(session, chunk_id, attempt=attempt):
        return None
    done = count_chunk_images(
        session, chunk.job_id, chunk.start_index, chunk.stop_index, ImageStatus.SUCCEEDED
    )
    _record_counts(session, chunk, done=done, failed=0)
    return bump_job_counters(session, chunk.job_id, done=done)


def cancel_pending_chunks(session: Session, job_id: str, *, limit: int = 10_000) -> JobProgress | None:
    """Cancel every chunk of a job that nobody holds (the reaper does this for cancelling jobs)."""
    chunk_ids = session.scalars(
        select(Chunk.id).where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.PENDING).limit(limit)
    ).all()
    progress = None
    for chunk_id in chunk_ids:
        progress = cancel_chunk_counted(session, chunk_id) or progress
    return progress


def _record_counts(session: Session, chunk: Chunk, *, done: int, failed: int) -> None:
    # Plain attribute writes flushed with the transaction: the chunk row shows what it produced.
    chunk.images_done = done
    chunk.images_failed = failed
    session.flush()
