"""Ending a chunk other than by success — quarantine (after N attempts) or cancel — and retrying a job's
quarantined chunks, each with accurate counters.

The worker and the reaper call quarantine and cancel; the API and `catalogan dlq retry` call the retry. Each
runs in the caller's one transaction: the chunk's status, its image rows and the job counters change
together, so `chunks_finished` reaches `chunks_total` exactly once per run of a chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from db.chunks import cancel_chunk, chunk_items, mark_quarantined
from db.errors import InvalidTransitionError
from db.images import count_chunk_images, write_failed_images
from db.jobs import JobProgress, bump_job_counters, get_job, is_expired, transition_job
from db.status import JOB_RETRYABLE, ChunkStatus, ImageStatus, JobStatus
from db.tables import Chunk, Image, Job


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
    write_failed_images(
        session,
        job_id=chunk.job_id,
        chunk_id=chunk.id,
        items=chunk_items(session, chunk),
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
    """Cancel a pending or leased chunk; images it already finished stay and count as done, and those the
    quality gate rejected before the cancel as rejected.

    Fenced by `attempt` when given. Returns the job's progress, or None when nothing changed.
    """
    chunk = session.get(Chunk, chunk_id)
    if chunk is None or not cancel_chunk(session, chunk_id, attempt=attempt):
        return None
    done = count_chunk_images(
        session, chunk.job_id, chunk.start_index, chunk.stop_index, ImageStatus.SUCCEEDED
    )
    rejected = count_chunk_images(
        session, chunk.job_id, chunk.start_index, chunk.stop_index, ImageStatus.REJECTED
    )
    _record_counts(session, chunk, done=done, failed=0)
    chunk.images_rejected = rejected
    session.flush()
    return bump_job_counters(session, chunk.job_id, done=done, rejected=rejected)


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


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """The chunks a retry put back to pending and the queue to publish them to."""

    job_id: str
    chunk_ids: tuple[int, ...]
    queue: str


def retry_failed_images(session: Session, job_id: str, *, tenant_id: str) -> RetryPlan:
    """Put the job's quarantined chunks back to pending, in the caller's transaction; publish them after it.

    Succeeded images stay (a rerun writes byte-identical objects to the same keys); the failed image rows of
    a retried chunk are deleted and the job's counters give back what the chunk had counted, so that the
    rerun counts it once. A failed or completed_with_failures job goes back to queued; a job still running keeps its status. Raises
    `NotFoundError` for another tenant's job and `InvalidTransitionError` when the job has no failed images
    to retry, is cancelled, or succeeded.
    """
    job = get_job(session, job_id, tenant_id=tenant_id, for_update=True)
    if job.status in (JobStatus.CANCELLED, JobStatus.CANCELLING):
        raise InvalidTransitionError(
            f"job {job_id} is {job.status.value}; only failed images of other jobs can be retried"
        )
    chunks = session.scalars(
        select(Chunk)
        .where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.QUARANTINED)
        .order_by(Chunk.id)
    ).all()
    if not chunks:
        raise InvalidTransitionError(f"job {job_id} has no failed images to retry")
    if job.status is JobStatus.SUCCEEDED:
        raise InvalidTransitionError(f"job {job_id} succeeded; a succeeded job cannot run again")
    if is_expired(job):
        raise InvalidTransitionError(f"job {job_id} expired and is being deleted; it cannot run again")
    done = sum(chunk.images_done for chunk in chunks)
    failed = sum(chunk.images_failed for chunk in chunks)
    rejected = sum(chunk.images_rejected for chunk in chunks)
    # One statement for every retried chunk's failed rows (a job may have 20,000 quarantined chunks: one DELETE
    # each held the job's row lock and a pooled connection for as many round trips).
    in_quarantined_chunk = exists().where(
        Chunk.job_id == job_id,
        Chunk.status == ChunkStatus.QUARANTINED,
        Image.index >= Chunk.start_index,
        Image.index < Chunk.stop_index,
    )
    session.execute(
        delete(Image)
        .where(Image.job_id == job_id, Image.status == ImageStatus.FAILED, in_quarantined_chunk)
        .execution_options(synchronize_session=False)
    )
    ids = [chunk.id for chunk in chunks]
    # quarantined → pending is the retry transition of CHUNK_TRANSITIONS; the guard keeps it to those rows.
    session.execute(
        update(Chunk)
        .where(Chunk.id.in_(ids), Chunk.status == ChunkStatus.QUARANTINED)
        .values(
            status=ChunkStatus.PENDING,
            # Never attempt=0: a worker frozen with an old lease would pass the fence again. A new budget instead.
            retry_base=Chunk.attempt,
            lease_expires_at=None,
            leased_by=None,
            enqueued_at=None,
            images_done=0,
            images_failed=0,
            images_rejected=0,
            finished_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            chunks_finished=Job.chunks_finished - len(ids),
            images_done=Job.images_done - done,
            images_failed=Job.images_failed - failed,
            images_rejected=Job.images_rejected - rejected,
            manifest_key=None,
        )
        .execution_options(synchronize_session=False)
    )
    if job.status in JOB_RETRYABLE:
        transition_job(session, job_id, JobStatus.QUEUED)
    return RetryPlan(job_id=job_id, chunk_ids=tuple(ids), queue=job.queue)
