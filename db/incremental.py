"""Incremental catalog jobs: finding items a tenant already has delivered images for, so a resubmit skips them.

An item is *delivered* when an earlier job item of the same tenant has the same `client_item_id`,
category, SKU and count, its job ran the same model version with the same seed, output format and
options, and every one of its `count` images succeeded. Resubmitting a catalog manifest with a few new
SKUs then generates only those: the others are planned as `job_items.skipped_existing = true` rows with
no chunks and no image indices, and the manifest lists their earlier images with status
`skipped_existing`.

Only items with a `client_item_id` take part, and only when the request gives its `seed` (a seedless
request gets a fresh random seed, so nothing it would generate can already exist).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from db.status import ImageStatus
from db.tables import Image, Job, JobItem

# Client item ids per IN (...) list: under SQLite's bound-variable limit with room for the other filters.
LOOKUP_BATCH_SIZE = 5000
SKIPPED_IMAGES_BATCH = 20_000  # earlier image rows read per query when a job lists its skipped items
SKIPPED_EXISTING_STATUS = "skipped_existing"

ItemKey = tuple[str, str, str | None, int]  # (client_item_id, category, sku, count)


@dataclass(frozen=True, slots=True)
class DeliveredItem:
    """An earlier job item whose images all succeeded."""

    job_id: str
    item_id: int
    first_index: int
    count: int


@dataclass(frozen=True, slots=True)
class JobSettings:
    """What must be equal for an earlier item's images to count as the same delivery."""

    tenant_id: str
    model_version_id: int
    seed: int
    output_format: str
    options: Mapping[str, Any]


def find_delivered_items(
    session: Session,
    settings: JobSettings,
    keys: Iterable[ItemKey],
    *,
    exclude_job_id: str | None = None,
    created_before: dt.datetime | None = None,
) -> dict[ItemKey, DeliveredItem]:
    """The earliest fully delivered earlier item for each key that has one (keys without one are absent)."""
    wanted = set(keys)
    ids = sorted({key[0] for key in wanted})
    found: dict[ItemKey, DeliveredItem] = {}
    succeeded = (
        select(func.count(Image.id))
        .where(
            Image.job_id == JobItem.job_id,
            Image.index >= JobItem.first_index,
            Image.index < JobItem.first_index + JobItem.count,
            Image.status == ImageStatus.SUCCEEDED,
        )
        .correlate(JobItem)
        .scalar_subquery()
    )
    for start in range(0, len(ids), LOOKUP_BATCH_SIZE):
        query = (
            select(JobItem, Job.options)
            .join(Job, Job.id == JobItem.job_id)
            .where(
                Job.tenant_id == settings.tenant_id,
                Job.model_version_id == settings.model_version_id,
                Job.seed == settings.seed,
                Job.output_format == settings.output_format,
                JobItem.skipped_existing.is_(False),
                JobItem.client_item_id.in_(ids[start : start + LOOKUP_BATCH_SIZE]),
                succeeded == JobItem.count,
            )
            .order_by(Job.created_at, JobItem.id)
        )
        if exclude_job_id is not None:
            query = query.where(Job.id != exclude_job_id)
        if created_before is not None:
            query = query.where(Job.created_at <= created_before)
        for item, options in session.execute(query):
            key: ItemKey = (str(item.client_item_id), item.category, item.sku, int(item.count))
            if key in wanted and key not in found and dict(options or {}) == dict(settings.options):
                found[key] = DeliveredItem(item.job_id, item.id, int(item.first_index), int(item.count))
    return found


def skipped_items_of(session: Session, job: Job) -> list[tuple[JobItem, DeliveredItem | None]]:
    """A job's skipped items in position order, each with the earlier delivery it stands for (None if gone)."""
    items: Sequence[JobItem] = session.scalars(
        select(JobItem)
        .where(JobItem.job_id == job.id, JobItem.skipped_existing.is_(True))
        .order_by(JobItem.position)
    ).all()
    if not items:
        return []
    settings = JobSettings(
        job.tenant_id, job.model_version_id, int(job.seed), job.output_format, job.options or {}
    )
    keys = [(str(item.client_item_id), item.category, item.sku, int(item.count)) for item in items]
    delivered = find_delivered_items(
        session, settings, keys, exclude_job_id=job.id, created_before=job.created_at
    )
    return [(item, delivered.get(key)) for item, key in zip(items, keys, strict=True)]


def iter_skipped_images(session: Session, job: Job) -> Iterator[tuple[JobItem, Image]]:
    """The earlier image rows a job's skipped items stand for, item by item in index order.

    Read for many items per query (up to `SKIPPED_IMAGES_BATCH` images): one query per item made a job of
    20,000 skipped items take a minute to finalize.
    """
    pairs = [(item, delivered) for item, delivered in skipped_items_of(session, job) if delivered is not None]
    start = 0
    while start < len(pairs):  # items deleted since (retention) are left out above: nothing to list
        stop, images = start, 0
        while stop < len(pairs) and (stop == start or images + pairs[stop][1].count <= SKIPPED_IMAGES_BATCH):
            images += pairs[stop][1].count
            stop += 1
        batch = pairs[start:stop]
        ranges = [
            and_(
                Image.job_id == delivered.job_id,
                Image.index >= delivered.first_index,
                Image.index < delivered.first_index + delivered.count,
            )
            for _, delivered in batch
        ]
        found = {
            (image.job_id, image.index): image for image in session.scalars(select(Image).where(or_(*ranges)))
        }
        for item, delivered in batch:
            for index in range(delivered.first_index, delivered.first_index + delivered.count):
                image = found.get((delivered.job_id, index))
                if image is not None:
                    yield item, image
        start = stop


def count_skipped_items(session: Session, job_id: str) -> tuple[int, int]:
    """(items, images) a job skipped because they were already delivered."""
    return count_skipped_items_of_jobs(session, [job_id]).get(job_id, (0, 0))


def count_skipped_items_of_jobs(session: Session, job_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(items, images) skipped as already delivered, per job id (jobs that skipped nothing are absent)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(JobItem.job_id, func.count(JobItem.id), func.sum(JobItem.count))
        .where(JobItem.job_id.in_(list(job_ids)), JobItem.skipped_existing.is_(True))
        .group_by(JobItem.job_id)
    )
    return {job_id: (int(items), int(images or 0)) for job_id, items, images in rows}
