"""A tenant's quotas on new jobs: concurrent jobs and generated images (redraws included) per rolling 24 h
(→ `QuotaExceededError`), and the highest queue its jobs may ask for (→ `PlanningError` on field `queue`).

Checked by `db.planning.submit_job` inside the submitting transaction, after the tenant's row is locked, so
two concurrent submits cannot both squeeze under a quota.
"""

from __future__ import annotations

import datetime as dt
from typing import get_args

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import PlanningError, QuotaExceededError
from db.job_specs import QueueName
from db.status import JobStatus
from db.tables import Job, Tenant, utcnow

QUOTA_WINDOW_SECONDS = 24 * 3600
CONCURRENT_JOBS_RETRY_AFTER_SECONDS = 30
ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)


def check_job_quotas(
    session: Session,
    tenant: Tenant,
    *,
    images: int,
    cost: int | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Raise `QuotaExceededError` when a new job would break the tenant's quotas now, and `PlanningError`
    (422, rule `images_per_day`) when its cost is larger than the whole daily quota.

    `cost` is the generations the job may spend (`JobSpec.quota_cost`: its `images`, each with its worst-case
    quality-gate redraws; None = `images`). Images per day is a rolling 24 h window over the `quota_cost` of
    submitted jobs. The reservation is kept whatever the job actually used (cancelled jobs included): it is
    not settled down at the end, because a retry of failed images and the reaper's reruns generate again
    without a new check, and only the worst case bounds a job over its whole life.
    """
    cost = images if cost is None else cost
    now = now or utcnow()
    if cost > tenant.images_per_day:
        # Waiting can never make this job fit: a 422 naming the quota, not a 429 with a Retry-After.
        if images > tenant.images_per_day:
            field, what = "items", f"a job of {images} images"
        else:
            field = "quality_gate.max_redraws"
            what = (
                f"a job of {images} images with up to {cost // images - 1} redraws each ({cost} generations)"
            )
        raise PlanningError(
            field,
            "images_per_day",
            f"{field}: {what} is larger than the tenant's whole quota of {tenant.images_per_day} images "
            "per day (each quality-gate redraw counts as an image)",
        )
    active = session.scalar(
        select(func.count()).where(Job.tenant_id == tenant.id, Job.status.in_(ACTIVE_JOB_STATUSES))
    )
    if (active or 0) >= tenant.max_concurrent_jobs:
        raise QuotaExceededError(
            f"concurrent jobs quota of {tenant.max_concurrent_jobs} reached; wait for a job to finish",
            retry_after_seconds=CONCURRENT_JOBS_RETRY_AFTER_SECONDS,
        )
    since = now - dt.timedelta(seconds=QUOTA_WINDOW_SECONDS)
    used, oldest = session.execute(
        select(func.coalesce(func.sum(Job.quota_cost), 0), func.min(Job.created_at)).where(
            Job.tenant_id == tenant.id, Job.created_at > since
        )
    ).one()
    if int(used) + cost > tenant.images_per_day:
        if oldest is None:  # cannot happen with cost <= quota; kept for a quota lowered meanwhile
            raise QuotaExceededError(
                f"images per day quota of {tenant.images_per_day} reached",
                retry_after_seconds=QUOTA_WINDOW_SECONDS,
            )
        frees_at = oldest + dt.timedelta(seconds=QUOTA_WINDOW_SECONDS)
        raise QuotaExceededError(
            f"images per day quota of {tenant.images_per_day} reached ({used} used in the last 24 h, "
            f"this job costs {cost})",
            retry_after_seconds=int((frees_at - now).total_seconds()) + 1,
        )


# The queues from the highest priority to the lowest: a tenant may ask for its `highest_queue` or any below it.
QUEUES_BY_PRIORITY: tuple[QueueName, ...] = ("interactive", "bulk", "backfill")
assert set(QUEUES_BY_PRIORITY) == set(get_args(QueueName))


def allowed_queues(highest_queue: str) -> tuple[str, ...]:
    """The queues a tenant whose allowance is `highest_queue` may ask for, highest first (an unknown name in
    the column counts as `bulk`, the default)."""
    highest = highest_queue if highest_queue in QUEUES_BY_PRIORITY else "bulk"
    return QUEUES_BY_PRIORITY[QUEUES_BY_PRIORITY.index(highest) :]


def check_queue_allowance(tenant: Tenant, queue: str) -> None:
    """Raise `PlanningError` (422 naming `queue`, rule `queue_allowance`) when `queue` is above the tenant's
    `highest_queue` (interactive > bulk > backfill); the operator raises it with `catalogan tenants set`."""
    allowed = allowed_queues(tenant.highest_queue)
    if queue not in allowed:
        raise PlanningError(
            "queue",
            "queue_allowance",
            f"queue: {queue!r} is above this tenant's allowance (highest queue {tenant.highest_queue!r}; "
            f"allowed: {', '.join(allowed)}); the operator raises it with `catalogan tenants set --highest-queue`",
        )
