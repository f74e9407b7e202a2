"""Deleting a finished job: its objects in the store, then its rows (`DELETE /v1/jobs/{id}`).

    deleted = delete_job(session_factory, store, job_id, tenant_id=tenant.id)   # objects removed, rows gone

Only a job in a terminal status (succeeded, failed, cancelled) is deleted; any other is a `ConflictError` (409:
cancel it first and delete it once it is `cancelled`). Every object of a job lies under
`<tenant>/jobs/<job id>/` (images, manifests, shards, exports). The job row is locked for the whole deletion,
so a concurrent retry or second delete waits; the objects go first and the rows (job items, chunks, images,
reviews and webhook deliveries, by `ON DELETE CASCADE`) last, in the same transaction: a store failure leaves
the rows, and a repeated DELETE finishes the work (deleting a missing object is not an error). A later job that
skipped items as already delivered by this one (`client_item_id`) keeps its own rows; its manifest's
`skipped_existing` entries point at the deleted objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import ConflictError
from db.jobs import get_job
from db.storage.base import ObjectStore
from db.tables import Job


@dataclass(frozen=True, slots=True)
class DeletedJob:
    """What a deletion removed."""

    job_id: str
    objects_deleted: int


def job_prefix(tenant_id: str, job_id: str) -> str:
    """The store prefix holding every object of a job."""
    return f"{tenant_id}/jobs/{job_id}/"


def delete_job(
    session_factory: sessionmaker[Session], store: ObjectStore, job_id: str, *, tenant_id: str | None
) -> DeletedJob:
    """Delete a terminal job's objects and rows; `NotFoundError` for an unknown job (or another tenant's),
    `ConflictError` while it is not finished. `tenant_id` None: any tenant's (the reaper)."""
    with transaction(session_factory) as session:
        job = get_job(session, job_id, tenant_id=tenant_id, for_update=True)
        if not job.status.is_terminal:
            raise ConflictError(
                f"job {job_id!r} is {job.status.value}: cancel it and delete it once it is cancelled"
            )
        deleted = 0
        for info in list(store.list(job_prefix(job.tenant_id, job.id))):
            store.delete(info.key)
            deleted += 1
        session.execute(delete(Job).where(Job.id == job.id))
    return DeletedJob(job_id, deleted)
