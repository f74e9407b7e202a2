"""Chunk leases: claim, reclaim after expiry, fencing of stale attempts, renew, release — and real races."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.chunks import (
    Lease,
    assert_lease,
    claim_chunk,
    complete_chunk,
    find_expired_leases,
    mark_quarantined,
    release_chunk,
    renew_lease,
)
from db.engine import make_engine, make_session_factory, transaction
from db.errors import StaleAttemptError
from db.status import ChunkStatus
from db.tables import Chunk, Job, utcnow
from tests.clock_skew import database_time, skew_host_clock, wait_until_database_passes
from tests.db.factories import insert_job


def _claim(factory: sessionmaker[Session], chunk_id: int, **kwargs: object) -> Lease | None:
    with transaction(factory) as session:
        return claim_chunk(session, chunk_id, worker="w", **kwargs)  # type: ignore[arg-type]


def _chunk(factory: sessionmaker[Session], chunk_id: int) -> Chunk:
    with factory() as session:
        chunk = session.get(Chunk, chunk_id)
        assert chunk is not None
        return chunk


def test_claim_takes_a_pending_chunk_with_attempt_one(session_factory: sessionmaker[Session]) -> None:
    """Given a pending chunk, when a worker claims it, then it is leased at attempt 1 until now + lease."""
    rows = insert_job(session_factory)
    now = utcnow()

    lease = _claim(session_factory, rows.chunk_ids[0], lease_seconds=60, now=now)

    assert lease is not None
    assert (lease.attempt, lease.start_index, lease.stop_index) == (1, 0, 4)
    chunk = _chunk(session_factory, rows.chunk_ids[0])
    assert chunk.status is ChunkStatus.LEASED
    assert chunk.lease_expires_at == lease.expires_at == now + dt.timedelta(seconds=60)


def test_a_live_lease_cannot_be_claimed_again(session_factory: sessionmaker[Session]) -> None:
    """Given a chunk under a live lease, a second claim returns None and the attempt stays 1."""
    rows = insert_job(session_factory)
    assert _claim(session_factory, rows.chunk_ids[0]) is not None

    assert _claim(session_factory, rows.chunk_ids[0]) is None
    assert _chunk(session_factory, rows.chunk_ids[0]).attempt == 1


def test_expired_lease_is_reclaimed_and_the_old_attempt_is_fenced(
    session_factory: sessionmaker[Session],
) -> None:
    """Given a lease that expired, a new claim gets attempt 2; the old attempt can no longer complete,
    renew or release it, and the new attempt's completion counts exactly once."""
    rows = insert_job(session_factory)
    start = utcnow()
    old = _claim(session_factory, rows.chunk_ids[0], lease_seconds=10, now=start)
    assert old is not None

    new = _claim(session_factory, rows.chunk_ids[0], lease_seconds=10, now=start + dt.timedelta(seconds=11))

    assert new is not None and new.attempt == old.attempt + 1 == 2
    with transaction(session_factory) as session, pytest.raises(StaleAttemptError, match="attempt 1"):
        complete_chunk(session, old, done=4)
    with transaction(session_factory) as session, pytest.raises(StaleAttemptError):
        renew_lease(session, old)
    with transaction(session_factory) as session, pytest.raises(StaleAttemptError):
        assert_lease(session, old)
    with transaction(session_factory) as session:
        assert release_chunk(session, old) is False
        progress = complete_chunk(session, new, done=3, failed=1)
    assert (progress.chunks_finished, progress.images_done, progress.images_failed) == (1, 3, 1)
    assert not progress.all_chunks_finished
    chunk = _chunk(session_factory, rows.chunk_ids[0])
    assert (chunk.status, chunk.attempt, chunk.images_done) == (ChunkStatus.SUCCEEDED, 2, 3)


def test_completing_twice_raises_and_counts_once(session_factory: sessionmaker[Session]) -> None:
    """Given a completed chunk, a redelivered completion of the same attempt raises and leaves counters alone."""
    rows = insert_job(session_factory, chunks=1)
    lease = _claim(session_factory, rows.chunk_ids[0])
    assert lease is not None
    with transaction(session_factory) as session:
        assert complete_chunk(session, lease, done=4).all_chunks_finished

    with transaction(session_factory) as session, pytest.raises(StaleAttemptError):
        complete_chunk(session, lease, done=4)
    with session_factory() as session:
        job = session.get(Job, rows.job_id)
        assert job is not None and (job.images_done, job.chunks_finished) == (4, 1)


def test_renew_extends_a_lease_so_it_is_not_reclaimed(session_factory: sessionmaker[Session]) -> None:
    """Given a lease renewed before it runs out, a claim after the original expiry still finds it live."""
    rows = insert_job(session_factory)
    start = utcnow()
    lease = _claim(session_factory, rows.chunk_ids[0], lease_seconds=10, now=start)
    assert lease is not None

    with transaction(session_factory) as session:
        renewed = renew_lease(session, lease, lease_seconds=60, now=start + dt.timedelta(seconds=5))

    assert renewed.expires_at == start + dt.timedelta(seconds=65)
    assert _claim(session_factory, rows.chunk_ids[0], now=start + dt.timedelta(seconds=30)) is None
    with session_factory() as session:
        assert find_expired_leases(session, now=start + dt.timedelta(seconds=30)) == []
        expired = find_expired_leases(session, now=start + dt.timedelta(seconds=66))
    assert [chunk.id for chunk in expired] == [rows.chunk_ids[0]]


def test_release_makes_the_chunk_pending_for_the_next_attempt(session_factory: sessionmaker[Session]) -> None:
    """Given a released lease, the chunk is pending with the error kept, and the next claim is attempt 2."""
    rows = insert_job(session_factory)
    lease = _claim(session_factory, rows.chunk_ids[0])
    assert lease is not None

    with transaction(session_factory) as session:
        assert release_chunk(session, lease, error="worker shutting down")

    chunk = _chunk(session_factory, rows.chunk_ids[0])
    assert (chunk.status, chunk.last_error, chunk.lease_expires_at) == (
        ChunkStatus.PENDING,
        "worker shutting down",
        None,
    )
    again = _claim(session_factory, rows.chunk_ids[0])
    assert again is not None and again.attempt == 2


def test_claim_stops_after_max_attempts(session_factory: sessionmaker[Session]) -> None:
    """Given a chunk released `max_attempts` times, it cannot be claimed again (the reaper quarantines it)."""
    rows = insert_job(session_factory)
    for _ in range(3):
        lease = _claim(session_factory, rows.chunk_ids[0], max_attempts=3)
        assert lease is not None
        with transaction(session_factory) as session:
            release_chunk(session, lease)

    assert _claim(session_factory, rows.chunk_ids[0], max_attempts=3) is None
    with transaction(session_factory) as session:
        assert mark_quarantined(session, rows.chunk_ids[0], error="3 attempts failed")
    assert _chunk(session_factory, rows.chunk_ids[0]).status is ChunkStatus.QUARANTINED


def test_quarantine_fenced_by_attempt_ignores_a_stale_caller(session_factory: sessionmaker[Session]) -> None:
    """Given attempt 2 holds the chunk, quarantining it in the name of attempt 1 changes nothing."""
    rows = insert_job(session_factory)
    start = utcnow()
    _claim(session_factory, rows.chunk_ids[0], lease_seconds=1, now=start)
    _claim(session_factory, rows.chunk_ids[0], now=start + dt.timedelta(seconds=2))

    with transaction(session_factory) as session:
        assert mark_quarantined(session, rows.chunk_ids[0], error="x", attempt=1) is False
    assert _chunk(session_factory, rows.chunk_ids[0]).status is ChunkStatus.LEASED


# --- real races on PostgreSQL ----------------------------------------------------------------------------


def _race(count: int, work: Callable[[int], object]) -> list[object]:
    """Run `work(n)` in `count` threads released at the same moment; return their results in order."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[n] = work(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


@pytest.fixture
def pg_session_factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on PostgreSQL with a pool large enough for every racing thread to hold a connection."""
    engine = make_engine(pg_url, pool_size=10)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.mark.parametrize("round_", range(5))
def test_two_sessions_claiming_one_chunk_exactly_one_wins(
    pg_session_factory: sessionmaker[Session], round_: int
) -> None:
    """Given a pending chunk, when two sessions claim it at the same moment, exactly one gets the lease."""
    rows = insert_job(pg_session_factory)

    results = _race(2, lambda n: _claim(pg_session_factory, rows.chunk_ids[0]))

    winners = [lease for lease in results if lease is not None]
    assert len(winners) == 1
    assert isinstance(winners[0], Lease) and winners[0].attempt == 1


def test_many_workers_reclaiming_an_expired_lease_exactly_one_wins(
    pg_session_factory: sessionmaker[Session],
) -> None:
    """Given an expired lease, when 8 workers reclaim it at once, one gets attempt 2 and the others nothing."""
    rows = insert_job(pg_session_factory)
    start = utcnow()
    _claim(pg_session_factory, rows.chunk_ids[0], lease_seconds=1, now=start)
    later = start + dt.timedelta(seconds=5)

    results = _race(8, lambda n: _claim(pg_session_factory, rows.chunk_ids[0], now=later))

    winners = [lease for lease in results if isinstance(lease, Lease)]
    assert [lease.attempt for lease in winners] == [2]
    assert _chunk(pg_session_factory, rows.chunk_ids[0]).attempt == 2


def test_stale_completion_racing_a_reclaim_never_double_counts(
    pg_session_factory: sessionmaker[Session],
) -> None:
    """Given an expired lease, when the old attempt completes while a new worker reclaims, the job's counters
    move by exactly one chunk's worth whichever wins."""
    rows = insert_job(pg_session_factory, chunks=1)
    start = utcnow()
    old = _claim(pg_session_factory, rows.chunk_ids[0], lease_seconds=1, now=start)
    assert old is not None

    def work(n: int) -> object:
        if n == 0:
            try:
                with transaction(pg_session_factory) as session:
                    return complete_chunk(session, old, done=4)
            except StaleAttemptError as exc:
                return exc
        new = _claim(pg_session_factory, rows.chunk_ids[0], now=start + dt.timedelta(seconds=5))
        if new is None:
            return None
        with transaction(pg_session_factory) as session:
            return complete_chunk(session, new, done=4)

    _race(2, work)

    with pg_session_factory() as session:
        job = session.scalars(select(Job).where(Job.id == rows.job_id)).one()
        assert (job.chunks_finished, job.images_done) == (1, 4)


def test_a_cancelled_chunk_counts_its_gate_rejections_as_rejected(
    session_factory: sessionmaker[Session],
) -> None:
    """A chunk stopped by a cancel keeps the rows it wrote before it stopped: its delivered images count as
    done and its quality-gate rejections as rejected (they were counted as nothing)."""
    from db.chunk_outcomes import cancel_chunk_counted
    from db.images import ImageRecord, upsert_images
    from db.jobs import request_cancel

    rows = insert_job(session_factory, chunks=2, chunk_size=4)
    chunk_id = rows.chunk_ids[0]
    with transaction(session_factory) as session:
        lease = claim_chunk(session, chunk_id, worker="w", lease_seconds=120)
    assert lease is not None
    records = [
        ImageRecord(0, "a", None, "k0", "ab" * 32, 1, 8, 8),
        ImageRecord.rejected(index=1, category="a", sku=None, score=0.1, redraws=2, error="gate"),
    ]
    with transaction(session_factory) as session:
        upsert_images(session, lease, records, renew_seconds=120)
        request_cancel(session, rows.job_id)
    with transaction(session_factory) as session:
        progress = cancel_chunk_counted(session, chunk_id, attempt=lease.attempt)
    assert progress is not None
    with session_factory() as session:
        job = session.get_one(Job, rows.job_id)
        chunk = session.get_one(Chunk, chunk_id)
        assert (job.images_done, job.images_rejected, job.images_failed) == (1, 1, 0)
        assert (chunk.images_done, chunk.images_rejected) == (1, 1)


# --- hosts whose clocks disagree (PostgreSQL: lease times are the database server's) ----------------------

HOUR = dt.timedelta(hours=1)


def _lease_row(factory: sessionmaker[Session], chunk_id: int) -> tuple[ChunkStatus, int, str | None]:
    chunk = _chunk(factory, chunk_id)
    return chunk.status, chunk.attempt, chunk.leased_by


def test_a_worker_whose_clock_runs_an_hour_ahead_does_not_take_a_live_lease(
    pg_session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given worker a holds a fresh 120 s lease, when worker b, whose clock runs an hour ahead, claims the
    chunk, then b gets nothing and a keeps its lease."""
    rows = insert_job(pg_session_factory)
    with transaction(pg_session_factory) as session:
        held = claim_chunk(session, rows.chunk_ids[0], worker="a", lease_seconds=120)
    assert held is not None
    assert "db.chunks" in skew_host_clock(monkeypatch, HOUR)

    with transaction(pg_session_factory) as session:
        stolen = claim_chunk(session, rows.chunk_ids[0], worker="b", lease_seconds=120)

    assert stolen is None
    assert _lease_row(pg_session_factory, rows.chunk_ids[0]) == (ChunkStatus.LEASED, 1, "a")


def test_a_worker_whose_clock_runs_an_hour_behind_still_takes_an_expired_lease(
    pg_session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given worker a's 1 s lease has run out on the database's clock, when worker b, whose clock runs an
    hour behind, claims the chunk, then b gets attempt 2 (a dead worker's chunk is not kept for an hour)."""
    rows = insert_job(pg_session_factory)
    with transaction(pg_session_factory) as session:
        dead = claim_chunk(session, rows.chunk_ids[0], worker="a", lease_seconds=1)
    assert dead is not None
    wait_until_database_passes(pg_session_factory, dead.expires_at)
    skew_host_clock(monkeypatch, -HOUR)

    with transaction(pg_session_factory) as session:
        taken = claim_chunk(session, rows.chunk_ids[0], worker="b", lease_seconds=120)

    assert taken is not None and taken.attempt == 2
    assert _lease_row(pg_session_factory, rows.chunk_ids[0]) == (ChunkStatus.LEASED, 2, "b")


@pytest.mark.parametrize("step", ["claim", "renew"])
def test_a_lease_written_by_a_worker_whose_clock_runs_ahead_ends_on_the_database_clock(
    pg_session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Given a worker whose clock runs an hour ahead takes (or renews) a 1 s lease and then dies, when the
    lease has run out on the database's clock, then a worker with the right time takes the chunk over —
    the dead worker's lease does not last an hour."""
    rows = insert_job(pg_session_factory)
    skew_host_clock(monkeypatch, HOUR)
    with transaction(pg_session_factory) as session:
        lease = claim_chunk(
            session, rows.chunk_ids[0], worker="ahead", lease_seconds=1 if step == "claim" else 120
        )
        assert lease is not None
        if step == "renew":
            lease = renew_lease(session, lease, lease_seconds=1)
        database_now = database_time(session)
    assert abs(lease.expires_at - (database_now + dt.timedelta(seconds=1))) < dt.timedelta(seconds=5)
    assert _chunk(pg_session_factory, rows.chunk_ids[0]).lease_expires_at == lease.expires_at
    wait_until_database_passes(pg_session_factory, lease.expires_at)
    monkeypatch.undo()  # the next claim runs on a host with the right time

    with transaction(pg_session_factory) as session:
        taken = claim_chunk(session, rows.chunk_ids[0], worker="on-time", lease_seconds=120)

    assert taken is not None and taken.attempt == 2
