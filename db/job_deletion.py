"""Deleting a finished job: its objects in the store, then its rows (`DELETE /v1/jobs/{id}` and retention).

    result = delete_job(session_factory, store, job_id, tenant_id=tenant.id)   # DELETE: expire now, purge
    for job_id in expired_job_ids(session_factory, now=now, limit=100):        # the reaper: expired jobs
        purge_job(session_factory, store, job_id, max_objects=budget)

Only a job in a terminal status (succeeded, completed_with_failures, failed, cancelled) is deleted; any other
is a `ConflictError` (409: cancel it first and delete it once it is `cancelled`). Every object of a job lies
under `<tenant>/jobs/<job id>/` (images, manifests, shards, exports).

No database connection is held while the store deletes: a job of a million images takes a while to delete,
and a connection held meanwhile would be a pool slot (and a row lock) lost to every other request. In three
steps, each committing on its own:

1. `expire_job` (one short transaction, the job row locked): check it is finished and set `expires_at` to now
   when it is later or unset. From then on the job is expired: a retry refuses it (`db.chunk_outcomes`), and
   if this process dies mid-way the reaper finishes the deletion.
2. `delete_objects` (no connection): list the prefix and delete at most `max_objects` objects with
   `ObjectStore.delete_many` (on S3 one request per 1,000 objects).
3. `delete_rows` (one short transaction), only once the prefix is empty: delete the job row (job items,
   chunks, images, reviews and webhook deliveries follow by `ON DELETE CASCADE`), guarded by "still
   terminal and expired".

A store failure leaves the rows, and a repeated DELETE (or the reaper) finishes the work (deleting a missing
object is not an error). A later job that skipped items as already delivered by this one (`client_item_id`)
keeps its own rows; its manifest's `skipped_existing` entries point at the deleted objects.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import ConflictError
from db.jobs import get_job
from db.status import JOB_TERMINAL
from db.storage.base import ObjectStore
from db.tables import Job, utcnow

# Objects one DELETE request removes at most before it answers 202 and leaves the rest to the reaper.
DELETE_REQUEST_MAX_OBJECTS = 1000


@dataclass(frozen=True, slots=True)
class DeletedJob:
    """What a deletion (or one step of it) removed; `finished`: the rows are gone too."""

    job_id: str
    objects_deleted: int
    finished: bool = True


def job_prefix(tenant_id: str, job_id: str) -> str:
    """The store prefix holding every object of a job."""
    return f"{tenant_id}/jobs/{job_id}/"


def expire_job(
    session_factory: sessionmaker[Session], job_id: str, *, tenant_id: str | None, now: dt.datetime
) -> str:
    """Step 1: mark a finished job expired (`expires_at` = now unless already past); returns its tenant id.

    `NotFoundError` for an unknown job (or another tenant's), `ConflictError` while it is not finished."""
    with transaction(session_factory) as session:
        job = get_job(session, job_id, tenant_id=tenant_id, for_update=True)
        if not job.status.is_terminal:
            raise ConflictError(
                f"job {job_id!r} is {job.status.value}: cancel it and delete it once it is cancelled"
            )
        if job.expires_at is None or job.expires_at > now:
            job.expires_at = now
        return job.tenant_id


def delete_objects(store: ObjectStore, prefix: str, *, max_objects: int) -> tuple[int, bool]:
    """Step 2 (no database): delete at most `max_objects` objects under `prefix`; returns (deleted, more left)."""
    keys: list[str] = []
    more = False
    for info in store.list(prefix):
        if len(keys) >= max_objects:
            more = True
            break
        keys.append(info.key)
    store.delete_many(keys)  # one DeleteObjects request per 1,000 keys on S3, not one request per key
    return len(keys), more


def delete_rows(session_factory: sessionmaker[Session], job_id: str, *, now: dt.datetime) -> bool:
    """Step 3: delete the job's rows if it is still finished and expired; True when a row was deleted."""
    with transaction(session_factory) as session:
        result = session.execute(
            delete(Job).where(Job.id == job_id, Job.status.in_(JOB_TERMINAL), Job.expires_at <= now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def purge_job(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    job_id: str,
    *,
    tenant_id: str,
    max_objects: int,
    now: dt.datetime,
) -> DeletedJob:
    """Steps 2 and 3 for an expired job: at most `max_objects` objects, then the rows once none is left."""
    deleted, more = delete_objects(store, job_prefix(tenant_id, job_id), max_objects=max_objects)
    if more:
        return DeletedJob(job_id, deleted, finished=False)
    delete_rows(session_factory, job_id, now=now)
    return DeletedJob(job_id, deleted, finished=True)


def delete_job(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    job_id: str,
    *,
    tenant_id: str | None,
    max_objects: int = DELETE_REQUEST_MAX_OBJECTS,
    now: dt.datetime | None = None,
) -> DeletedJob:
    """Delete a terminal job: expire it now, delete up to `max_objects` of its objects, and its rows when no
    object is left (`finished=False`: the reaper deletes the rest). `NotFoundError` for an unknown job (or
    another tenant's), `ConflictError` while it is not finished. `tenant_id` None: any tenant's."""
    now = now or utcnow()
    owner = expire_job(session_factory, job_id, tenant_id=tenant_id, now=now)
    return purge_job(session_factory, store, job_id, tenant_id=owner, max_objects=max_objects, now=now)


def expired_jobs(
    session_factory: sessionmaker[Session], *, now: dt.datetime, limit: int
) -> list[tuple[str, str]]:
    """(job id, tenant id) of finished jobs past their `expires_at`, the longest expired first."""
    with session_factory() as session:
        rows = session.execute(
            select(Job.id, Job.tenant_id)
            .where(Job.expires_at <= now, Job.status.in_(JOB_TERMINAL))
            .order_by(Job.expires_at, Job.id)
            .limit(limit)
        ).all()
    return [(str(job_id), str(tenant_id)) for job_id, tenant_id in rows]
