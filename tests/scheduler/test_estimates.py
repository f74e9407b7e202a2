"""The throughput `POST /v1/jobs:estimate` uses: the fleet's images per second while it was busy, from SQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.status import ImageStatus
from db.tables import Image, utcnow
from scheduler.estimates import MIN_SAMPLE_IMAGES, measured_throughput
from tests.db.factories import insert_job


def _write_images(factory: sessionmaker[Session], times: list[dt.datetime]) -> None:
    """Image rows of one job written at `times`."""
    rows = insert_job(factory, chunks=1, chunk_size=len(times))
    with transaction(factory) as session:
        session.execute(
            insert(Image),
            [
                {
                    "job_id": rows.job_id,
                    "chunk_id": rows.chunk_ids[0],
                    "index": index,
                    "category": "Sneaker",
                    "status": ImageStatus.SUCCEEDED,
                    "attempt": 1,
                    "created_at": moment,
                }
                for index, moment in enumerate(times)
            ],
        )


def _burst(start: dt.datetime, images: int, seconds: float) -> list[dt.datetime]:
    return [start + dt.timedelta(seconds=seconds * i / images) for i in range(images)]


def test_idle_time_between_jobs_is_not_counted_as_work(session_factory: sessionmaker[Session]) -> None:
    # Given two jobs of 100 images, each written in 5 s (20 images/s), half an hour apart, within the last hour
    now = utcnow()
    _write_images(
        session_factory,
        _burst(now - dt.timedelta(minutes=40), 100, 5) + _burst(now - dt.timedelta(minutes=5), 100, 5),
    )
    # And images older than the hour, which do not count
    _write_images(session_factory, _burst(now - dt.timedelta(hours=2), 1000, 1))
    # When the fleet's throughput is measured
    with session_factory() as session:
        measured = measured_throughput(session, default=50.0, now=now)
    # Then it is the rate while busy, within the 10 s buckets' rounding (each burst fills one or two buckets):
    # the span from the first to the last write (35 min) made it 0.1 images/s
    assert measured.basis == "measured"
    assert 5.0 <= measured.images_per_second <= 10.0, measured


def test_too_few_images_fall_back_to_the_default(session_factory: sessionmaker[Session]) -> None:
    now = utcnow()
    _write_images(session_factory, _burst(now - dt.timedelta(minutes=1), MIN_SAMPLE_IMAGES - 1, 1))
    with session_factory() as session:
        assert measured_throughput(session, default=50.0, now=now).images_per_second == 50.0
        assert measured_throughput(session, default=50.0, now=now).basis == "default"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_steady_fleet_measures_its_rate(session_factory: sessionmaker[Session]) -> None:
    # Given 600 images written steadily over the last minute (10 images/s)
    now = utcnow()
    _write_images(session_factory, _burst(now - dt.timedelta(seconds=60), 600, 60))
    with session_factory() as session:
        rate = measured_throughput(session, default=50.0, now=now).images_per_second
    # Then the rate is 10 images/s, give or take one partly filled 10 s bucket at either end
    assert 600 / 80 <= rate <= 600 / 60, rate
