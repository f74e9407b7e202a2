"""Dry-run estimates: how many images and chunks a job makes, and how long it takes at measured throughput.

Throughput is measured in SQL from the images workers wrote in the last `THROUGHPUT_WINDOW_SECONDS`
(all tenants: it measures the fleet, not a job): images / (last - first write time). With fewer than
`MIN_SAMPLE_IMAGES` images in the window the configured default is used and the estimate says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.job_specs import JobSpec
from db.tables import Image, utcnow

THROUGHPUT_WINDOW_SECONDS = 3600
MIN_SAMPLE_IMAGES = 16
MIN_SPAN_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Throughput:
    """Images per second and where the number came from (`measured` or `default`)."""

    images_per_second: float
    basis: str


def measured_throughput(session: Session, *, default: float, now: dt.datetime | None = None) -> Throughput:
    """Fleet throughput from the image rows of the last hour, or `default` without enough data."""
    since = (now or utcnow()) - dt.timedelta(seconds=THROUGHPUT_WINDOW_SECONDS)
    count, first, last = session.execute(
        select(func.count(), func.min(Image.created_at), func.max(Image.created_at)).where(
            Image.created_at > since
        )
    ).one()
    if count < MIN_SAMPLE_IMAGES or first is None or last is None:
        return Throughput(default, "default")
    span = max(MIN_SPAN_SECONDS, (last - first).total_seconds())
    return Throughput(round(count / span, 3), "measured")


def count_chunks(spec: JobSpec) -> int:
    """Chunks planning would make for `spec` (`JobSpec.chunks_total`: consecutive small items share a chunk);
    a variation or interpolation job is one item of its images."""
    return spec.chunks_total()
