"""Job rows: lookups, guarded status transitions, atomic counters and durable cancel."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.errors import InvalidTransitionError, NotFoundError
from db.status import JOB_TRANSITIONS, JobStatus, check_transition, sources_of
from db.tables import Job, utcnow


def get_job(session: Session, job_id: str, *, tenant_id: str | None = None, for_update: bool = False) -> Job:
    """Return the job, or raise `NotFoundError` (also when it belongs to another tenant)."""
    query = select(Job).where(Job.id == job_id)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    if for_update:
        query = query.with_for_update()
    job = session.scalars(query).one_or_none()
    if job is None:
        raise NotFoundError(f"job {job_id!r} not found")
    return job


def transition_job(
    session: Session,
    job_id: str,
    target: JobStatus,
    *,
    error: str | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Move a job to `target` with one guarded UPDATE.

    Returns True when this call made the change, False when the job already was in `target`
    (transitions are idempotent so a redelivered task can repeat them). Raises
    `InvalidTransitionError` when the current status does not allow `target`.
    """
    now = now or utcnow()
    values: dict[str, object] = {"status": target}
    if target is JobStatus.RUNNING:
        values["started_at"] = now
    if target.is_terminal:
        values["finished_at"] = now
    if error is not None:
        values["error"] = error
    if target is JobStatus.QUEUED:  # retry: the job runs again
        values["finished_at"] = None
        values["error"] = None
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sources_of(target, JOB_TRANSITIONS)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return True
    current = session.scalar(select(Job.status).where(Job.id == job_id))
    if current is None:
        raise NotFoundError(f"job {job_id!r} not found")
    if current == target:
        return False
    check_transition(f"job {job_id}", current, target, JOB_TRANSITIONS)
    raise InvalidTransitionError(
        f"job {job_id}: lost a race moving to {target.value!r} (now {current.value!r})"
    )


def mark_job_running(session: Session, job_id: str) -> bool:
    """queued → running on the first claimed chunk; a no-op for a job already past queued."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, started_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def request_cancel(session: Session, job_id: str, *, tenant_id: str | None = None) -> Job:
    """Durably ask a job to stop: sets the flag workers check between batches and moves it to cancelling.

    A job already finished is returned unchanged; cancelling twice is a no-op.
    """
    job = get_job(session, job_id, tenant_id=tenant_id)
    if job.status.is_terminal or job.status is JobStatus.CANCELLING:
        return job
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    transition_job(session, job_id, JobStatus.CANCELLING)
    session.refresh(job)
    return job


def is_cancel_requested(session: Session, job_id: str) -> bool:
    """True once someone asked the job to stop (checked by workers between batches)."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


@dataclass(frozen=True, slots=True)
class JobProgress:
    """Counters of a job right after an atomic bump."""

    chunks_finished: int
    chunks_total: int
    images_done: int
    images_failed: int
    images_rejected: int

    @property
    def all_chunks_finished(self) -> bool:
        """True when no chunk is left to run: the caller that saw this finalizes the job."""
        return self.chunks_finished >= self.chunks_total


def bump_job_counters(
    session: Session, job_id: str, *, chunks: int = 1, done: int = 0, failed: int = 0, rejected: int = 0
) -> JobProgress:
    """Add to a job's counters in one UPDATE ... RETURNING (no read-modify-write in Python)."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            chunks_finished=Job.chunks_finished + chunks,
            images_done=Job.images_done + done,
            images_failed=Job.images_failed + failed,
            images_rejected=Job.images_rejected + rejected,
        )
        .returning(
            Job.chunks_finished, Job.chunks_total, Job.images_done, Job.images_failed, Job.images_rejected
        )
        .execution_options(synchronize_session=False)
    ).one()
    return JobProgress(*row)
