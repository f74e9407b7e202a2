"""Dry-run estimates: how many images and chunks a job makes, and how long it takes at measured throughput.

Throughput is measured in SQL from the images workers wrote in the last `THROUGHPUT_WINDOW_SECONDS`
(all tenants: it measures the fleet, not a job) over the time the fleet was busy: images / (the
`BUSY_BUCKET_SECONDS` buckets in which any image was written × their length). Idle time between jobs is not
work: dividing by the span from the first to the last write instead made two 5-second bursts half an hour apart
read as 0.1 images/s. With fewer than `MIN_SAMPLE_IMAGES` images in the window the configured default is used
and the estimate says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Integer, cast, func, select
from sqlalchemy.orm import Session

from db.job_specs import JobSpec
from db.tables import Image, utcnow

THROUGHPUT_WINDOW_SECONDS = 3600
MIN_SAMPLE_IMAGES = 16
BUSY_BUCKET_SECONDS = 10


@dataclass(frozen=True, slots=True)
class Throughput:
    """Images per second and where the number came from (`measured` or `default`)."""

    images_per_second: float
    basis: str


def measured_throughput(session: Session, *, default: float, now: dt.datetime | None = None) -> Throughput:
    """Fleet throughput while busy, from the image rows of the last hour, or `default` without enough data."""
    since = (now or utcnow()) - dt.timedelta(seconds=THROUGHPUT_WINDOW_SECONDS)
    bucket = _bucket(session).label("bucket")
    per_bucket = (
        select(bucket, func.count().label("images"))
        .where(Image.created_at > since)
        .group_by(bucket)
        .subquery()
    )
    count, buckets = session.execute(
        select(func.coalesce(func.sum(per_bucket.c.images), 0), func.count())
    ).one()
    if count < MIN_SAMPLE_IMAGES or not buckets:
        return Throughput(default, "default")
    return Throughput(round(int(count) / (int(buckets) * BUSY_BUCKET_SECONDS), 3), "measured")


def _bucket(session: Session) -> ColumnElement[Any]:
    # The BUSY_BUCKET_SECONDS bucket of each image's write time (at most 360 of them in the window).
    if session.get_bind().dialect.name == "postgresql":
        return func.floor(func.extract("epoch", Image.created_at) / BUSY_BUCKET_SECONDS)
    # SQLite keeps the timestamp as text; strftime('%s') reads it as seconds since the epoch.
    return cast(func.strftime("%s", Image.created_at), Integer) // BUSY_BUCKET_SECONDS


def count_chunks(spec: JobSpec) -> int:
    """Chunks planning would make for `spec` (`JobSpec.chunks_total`: consecutive small items share a chunk);
    a variation or interpolation job is one item of its images."""
    return spec.chunks_total()
