"""Retrying a job's failed images: its quarantined chunks go back to pending and are published again.

Succeeded images stay (a rerun writes byte-identical objects to the same keys); the failed image rows of a
retried chunk are deleted and the job's counters give back what the chunk had counted, so that the rerun
counts it once. A failed job goes back to queued; a job still running keeps its status.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.jobs import get_job, transition_job
from db.status import ChunkStatus, ImageStatus, JobStatus
from db.tables import Chunk, Image, Job
from scheduler.errors import JobStateError


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """The chunks a retry put back to pending and the queue to publish them to."""

    job_id: str
    chunk_ids: tuple[int, ...]
    queue: str


def retry_failed_images(session: Session, job_id: str, *, tenant_id: str) -> RetryPlan:
    """Put the job's quarantined chunks back to pending, in the caller's transaction.

    Raises `NotFoundError` for another tenant's job and `JobStateError` when the job has no failed
    images to retry or is cancelled.
    """
    job = get_job(session, job_id, tenant_id=tenant_id, for_update=True)
    if job.status in (JobStatus.CANCELLED, JobStatus.CANCELLING):
        raise JobStateError(
            f"job {job_id} is {job.status.value}; only failed images of other jobs can be retried"
        )
    chunks = session.scalars(
        select(Chunk)
        .where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.QUARANTINED)
        .order_by(Chunk.id)
    ).all()
    if not chunks:
        raise JobStateError(f"job {job_id} has no failed images to retry")
    if job.status is JobStatus.SUCCEEDED:
        raise JobStateError(f"job {job_id} succeeded; a succeeded job cannot run again")
    done = sum(chunk.images_done for chunk in chunks)
    failed = sum(chunk.images_failed for chunk in chunks)
    rejected = sum(chunk.images_rejected for chunk in chunks)
    for chunk in chunks:
        session.execute(
            delete(Image)
            .where(
                Image.job_id == job_id,
                Image.index >= chunk.start_index,
                Image.index < chunk.stop_index,
                Image.status == ImageStatus.FAILED,
            )
            .execution_options(synchronize_session=False)
        )
    ids = [chunk.id for chunk in chunks]
    # quarantined → pending is the retry transition of CHUNK_TRANSITIONS; the guard keeps it to those rows.
    session.execute(
        update(Chunk)
        .where(Chunk.id.in_(ids), Chunk.status == ChunkStatus.QUARANTINED)
        .values(
            status=ChunkStatus.PENDING,
            attempt=0,
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
    if job.status is JobStatus.FAILED:
        transition_job(session, job_id, JobStatus.QUEUED)
    return RetryPlan(job_id, tuple(ids), job.queue)
