"""Retry never resets the fencing token: a worker frozen holding an old lease stays fenced out after its chunk
is quarantined and the job retried, and the retried chunk still gets a full budget of attempts. PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import quarantine_chunk, retry_failed_images
from db.chunks import assert_lease, claim_chunk, release_chunk
from db.engine import transaction
from db.errors import StaleAttemptError
from db.status import JobStatus
from db.tables import Chunk, utcnow
from tests.db.factories import insert_job

MAX_ATTEMPTS = 2


def test_a_worker_frozen_across_quarantine_and_retry_cannot_write(pg_factory: sessionmaker[Session]) -> None:
    """Given a chunk leased by worker A, which then freezes; its lease expires and the chunk is quarantined
    (as the reaper does) and the job retried; worker B claims the chunk again,
    when A wakes and makes its fenced write, then it is refused as stale, B's lease holds, and the chunk's
    attempt went on growing (3 claims: attempt 3, never back to 1)."""
    rows = insert_job(pg_factory, chunks=1, status=JobStatus.RUNNING)
    chunk_id = rows.chunk_ids[0]
    t0 = utcnow()
    with transaction(pg_factory) as session:
        frozen = claim_chunk(
            session, chunk_id, worker="a", lease_seconds=1, max_attempts=MAX_ATTEMPTS, now=t0
        )
    assert frozen is not None and frozen.attempt == 1
    # A is frozen; the lease expires, the chunk is given up on and the tenant retries the job.
    with transaction(pg_factory) as session:
        quarantine_chunk(session, chunk_id, error="lease expired")
    with transaction(pg_factory) as session:
        retry_failed_images(session, rows.job_id, tenant_id=rows.tenant_id)
    with transaction(pg_factory) as session:
        b = claim_chunk(
            session, chunk_id, worker="b", max_attempts=MAX_ATTEMPTS, now=t0 + dt.timedelta(seconds=5)
        )
    assert b is not None and b.attempt == 2 and b.round_attempts == 1

    with pytest.raises(StaleAttemptError), transaction(pg_factory) as session:
        assert_lease(session, frozen)  # A wakes: its first write is fenced out
    with transaction(pg_factory) as session:
        assert_lease(session, b)
        assert session.get_one(Chunk, chunk_id).attempt == 2


def test_a_retried_chunk_gets_a_fresh_budget_of_attempts(pg_factory: sessionmaker[Session]) -> None:
    """Given a chunk quarantined after its 2 attempts and a retry, when workers claim and fail it again, then
    it can be claimed exactly 2 more times (attempts 3 and 4), and a third claim is refused."""
    rows = insert_job(pg_factory, chunks=1, status=JobStatus.RUNNING)
    chunk_id = rows.chunk_ids[0]
    now = utcnow()

    def claim_and_fail() -> int | None:
        with transaction(pg_factory) as session:
            lease = claim_chunk(session, chunk_id, worker="w", max_attempts=MAX_ATTEMPTS, now=now)
            if lease is None:
                return None
            release_chunk(session, lease, error="boom")
            return lease.attempt

    assert [claim_and_fail(), claim_and_fail(), claim_and_fail()] == [1, 2, None]
    with transaction(pg_factory) as session:
        quarantine_chunk(session, chunk_id, error="boom")
    with transaction(pg_factory) as session:
        retry_failed_images(session, rows.job_id, tenant_id=rows.tenant_id)
    assert [claim_and_fail(), claim_and_fail(), claim_and_fail()] == [3, 4, None]
