"""Job rows: guarded transitions in SQL, durable cancel, atomic counters."""

from __future__ import annotations

import itertools
import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory, transaction
from db.errors import InvalidTransitionError, NotFoundError
from db.jobs import (
    bump_job_counters,
    get_job,
    is_cancel_requested,
    mark_job_running,
    request_cancel,
    transition_job,
)
from db.status import JOB_TRANSITIONS, JobStatus
from tests.db.factories import insert_job

PAIRS = [
    pytest.param(current, target, id=f"{current.value}->{target.value}")
    for current, target in itertools.product(list(JobStatus), repeat=2)
]


@pytest.mark.parametrize(("current", "target"), PAIRS)
def test_transition_job_follows_the_map_in_sql(
    session_factory: sessionmaker[Session], current: JobStatus, target: JobStatus
) -> None:
    """Given a job stored in `current`, transition_job to `target` changes the row iff the map allows it,
    is a no-op returning False when already there, and raises InvalidTransitionError otherwise."""
    rows = insert_job(session_factory, status=current)
    with transaction(session_factory) as session:
        if target in JOB_TRANSITIONS[current]:
            assert transition_job(
                session, rows.job_id, target, error="e" if target is JobStatus.FAILED else None
            )
        elif target == current:
            assert transition_job(session, rows.job_id, target) is False
        else:
            with pytest.raises(InvalidTransitionError, match=f"'{current.value}' to '{target.value}'"):
                transition_job(session, rows.job_id, target)
    expected = target if (target in JOB_TRANSITIONS[current] or target == current) else current
    with session_factory() as session:
        assert get_job(session, rows.job_id).status is expected


def test_transitions_stamp_times_and_errors(session_factory: sessionmaker[Session]) -> None:
    """Given a queued job, running sets started_at, failed sets finished_at and the error, retry clears both."""
    rows = insert_job(session_factory)
    with transaction(session_factory) as session:
        assert mark_job_running(session, rows.job_id)
        assert not mark_job_running(session, rows.job_id)
        transition_job(session, rows.job_id, JobStatus.FAILED, error="3 chunks quarantined")
    with session_factory() as session:
        job = get_job(session, rows.job_id)
        assert job.started_at is not None and job.finished_at is not None
        assert job.error == "3 chunks quarantined"

    with transaction(session_factory) as session:
        transition_job(session, rows.job_id, JobStatus.QUEUED)
    with session_factory() as session:
        job = get_job(session, rows.job_id)
        assert (job.status, job.finished_at, job.error) == (JobStatus.QUEUED, None, None)


def test_unknown_job_and_other_tenants_job_are_not_found(session_factory: sessionmaker[Session]) -> None:
    """Given a job of tenant A, looking it up as tenant B or by a wrong id raises NotFoundError."""
    rows = insert_job(session_factory)
    with session_factory() as session:
        assert get_job(session, rows.job_id, tenant_id=rows.tenant_id).id == rows.job_id
        with pytest.raises(NotFoundError):
            get_job(session, rows.job_id, tenant_id="someone-else")
        with pytest.raises(NotFoundError):
            transition_job(session, "nope", JobStatus.RUNNING)


def test_cancel_is_durable_and_idempotent(session_factory: sessionmaker[Session]) -> None:
    """Given a running job, request_cancel sets the flag and cancelling; a second request changes nothing;
    a finished job is returned unchanged."""
    rows = insert_job(session_factory, status=JobStatus.RUNNING)
    with transaction(session_factory) as session:
        assert request_cancel(session, rows.job_id).status is JobStatus.CANCELLING
        assert request_cancel(session, rows.job_id).status is JobStatus.CANCELLING
    with session_factory() as session:
        assert is_cancel_requested(session, rows.job_id)

    done = insert_job(session_factory, status=JobStatus.SUCCEEDED)
    with transaction(session_factory) as session:
        assert request_cancel(session, done.job_id).status is JobStatus.SUCCEEDED
        assert not is_cancel_requested(session, done.job_id)


def test_concurrent_counter_bumps_are_not_lost(pg_url: str) -> None:
    """Given a job on PostgreSQL, 8 threads x 25 bumps of one image each add up to exactly 200."""
    engine = make_engine(pg_url, pool_size=8)
    factory = make_session_factory(engine)
    rows = insert_job(factory, chunks=200, chunk_size=1)

    def bump() -> None:
        for _ in range(25):
            with transaction(factory) as session:
                bump_job_counters(session, rows.job_id, done=1)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with factory() as session:
        job = get_job(session, rows.job_id)
        assert (job.images_done, job.chunks_finished) == (200, 200)
    engine.dispose()
