"""Chunk leases: claim with one UPDATE, fence stale attempts, release, quarantine, find expired leases.

The lease is the only lock. `attempt` rises by one at every claim; every write a worker makes for a chunk
is guarded by `WHERE id = :id AND attempt = :attempt AND status = 'leased'`, so a worker that was paused
past its lease (and whose chunk another worker has since claimed) can no longer change anything.

Lease times are on one clock, the database server's, because the hosts that write and compare them disagree:
a worker whose clock ran ahead would take live leases and write leases that outlive it, a reaper whose clock
ran ahead would reclaim live ones. On PostgreSQL every lease time written (`lease_expires_at` at claim and
renewal, `enqueued_at`) is computed by the server in the UPDATE itself, `clock_timestamp() + interval`, and
every comparison (a claim of an expired lease, the reaper's expiry scan and lost-message threshold) is against
`statement_timestamp()`. Not `now()`: that is when the transaction began, so a renewal late in a transaction
would write an expiry already partly spent. `clock_timestamp()` for writes: the lease starts when its row is
written, even after waiting on a row lock. `statement_timestamp()` for comparisons: one instant for the
whole statement (stable, so the (status, lease_expires_at) index serves the scan), and a statement that waited
on a lock compares with the earlier instant, which errs towards leaving a lease alone. The `Lease` a claim
or renewal returns carries the expiry the database wrote (RETURNING).

On SQLite (the embedded stack: one host by construction, so the Python clock is the database host's clock)
the times come from `db.tables.utcnow`: SQLite stores timestamps as naive text compared as text
(`db.tables.UTCDateTime`), which its own `strftime(..., 'now')` (milliseconds, another format) would not
match. `uses_database_clock` says which; `now=` arguments stand in for either clock (tests that move time).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Interval, and_, func, literal, or_, select, update
from sqlalchemy.orm import Session

from db.errors import StaleAttemptError
from db.jobs import JobProgress, bump_job_counters
from db.status import ChunkStatus
from db.tables import Chunk, JobItem, Timestamp, utcnow

LEASE_SECONDS = 120
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof that one attempt holds a chunk until `expires_at`.

    `expires_at` is on the lease clock (the database server's on PostgreSQL, as RETURNING gave it): compare it
    with that clock, never with this host's; the fenced writes, not this field, decide whether the lease holds.
    """

    chunk_id: int
    job_id: str
    item_id: int
    start_index: int
    stop_index: int
    attempt: int
    expires_at: dt.datetime
    # The chunk's attempt when it was last retried: this round's attempts are `attempt - retry_base`.
    retry_base: int = 0

    @property
    def round_attempts(self) -> int:
        """Attempts used since the chunk was last retried (the budget `max_attempts` bounds)."""
        return self.attempt - self.retry_base


@dataclass(frozen=True, slots=True)
class ChunkItem:
    """The part `[start, stop)` of a chunk that belongs to one item, with what each of its images is made of."""

    start: int
    stop: int
    category: str
    class_index: int
    sku: str | None


class ChunkRangeLike(Protocol):
    """A chunk's range and first item: a `Lease` or a `db.tables.Chunk` row."""

    @property
    def job_id(self) -> str: ...
    @property
    def item_id(self) -> int: ...
    @property
    def start_index(self) -> int: ...
    @property
    def stop_index(self) -> int: ...


def chunk_items(session: Session, chunk: ChunkRangeLike) -> tuple[ChunkItem, ...]:
    """The items covering a chunk's indices, in index order, each cut to the chunk's range.

    A chunk covers one item or several consecutive small ones (`db.chunk_layout`); every image keeps its own
    item's category, class index and SKU. Read through the chunk's first item (`item_id`, which holds
    `start_index`) and the (job_id, first_index) index for the items starting inside the range; items
    skipped as already delivered own no indices and are left out.
    """
    start, stop = chunk.start_index, chunk.stop_index
    rows = session.execute(
        select(JobItem.first_index, JobItem.count, JobItem.category, JobItem.class_index, JobItem.sku)
        .where(
            or_(
                JobItem.id == chunk.item_id,
                and_(
                    JobItem.job_id == chunk.job_id,
                    JobItem.first_index > start,
                    JobItem.first_index < stop,
                    JobItem.skipped_existing.is_(False),
                ),
            )
        )
        .order_by(JobItem.first_index)
    ).all()
    return tuple(
        ChunkItem(max(first, start), min(first + count, stop), category, class_index, sku)
        for first, count, category, class_index, sku in rows
        if first < stop and first + count > start
    )


def uses_database_clock(session: Session) -> bool:
    """True when lease times come from the database server's clock (PostgreSQL), False when they come from
    this host's (SQLite, the one-host embedded stack); see the module docstring."""
    return session.get_bind().dialect.name == "postgresql"


def lease_clock(
    session: Session, *, now: dt.datetime | None = None, offset: dt.timedelta = dt.timedelta(0)
) -> ColumnElement[dt.datetime]:
    """The current time plus `offset` on the clock lease times are kept in, as a SQL expression to compare
    `lease_expires_at` or `enqueued_at` with: `statement_timestamp()` on PostgreSQL, this host's clock on
    SQLite, `now` when given."""
    return _clock(session, now, offset, func.statement_timestamp)


def _written_time(
    session: Session, now: dt.datetime | None, offset: dt.timedelta = dt.timedelta(0)
) -> ColumnElement[dt.datetime]:
    # A lease time to write: on PostgreSQL `clock_timestamp()`, when the row is written (after any lock wait).
    return _clock(session, now, offset, func.clock_timestamp)


def _clock(
    session: Session, now: dt.datetime | None, offset: dt.timedelta, server_time: Callable[..., Any]
) -> ColumnElement[dt.datetime]:
    if now is None and uses_database_clock(session):
        time: ColumnElement[dt.datetime] = server_time(type_=Timestamp)
        return time + literal(offset, Interval()) if offset else time
    # SQLite (one host: this clock is the database host's), or a time the caller chose.
    return literal((now or utcnow()) + offset, Timestamp)


def _claimable(now: ColumnElement[dt.datetime]) -> object:
    return or_(
        Chunk.status == ChunkStatus.PENDING,
        and_(Chunk.status == ChunkStatus.LEASED, Chunk.lease_expires_at < now),
    )


def claim_chunk(
    session: Session,
    chunk_id: int,
    *,
    worker: str,
    lease_seconds: float = LEASE_SECONDS,
    max_attempts: int = MAX_ATTEMPTS,
    now: dt.datetime | None = None,
) -> Lease | None:
    """Take the lease on a chunk in one UPDATE ... RETURNING.

    Succeeds when the chunk is pending, or leased with an expired lease; returns None when it is finished,
    held by a live lease, or has used up `max_attempts` (the reaper quarantines those).
    Of two concurrent callers exactly one gets the lease: the row lock (PostgreSQL) or the database
    write lock (SQLite) makes the second UPDATE see the first one's result.
    Expiry is read and written on the lease clock (the database's on PostgreSQL), never this host's alone;
    `now` stands in for it (tests).
    """
    claimable = _claimable(lease_clock(session, now=now))
    expires = _written_time(session, now, dt.timedelta(seconds=lease_seconds))
    row = session.execute(
        update(Chunk)
        .where(Chunk.id == chunk_id, Chunk.attempt - Chunk.retry_base < max_attempts, claimable)  # type: ignore[arg-type]
        .values(
            status=ChunkStatus.LEASED, attempt=Chunk.attempt + 1, lease_expires_at=expires, leased_by=worker
        )
        .returning(
            Chunk.job_id,
            Chunk.item_id,
            Chunk.start_index,
            Chunk.stop_index,
            Chunk.attempt,
            Chunk.lease_expires_at,
            Chunk.retry_base,
        )
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    job_id, item_id, start, stop, attempt, expires_at, retry_base = row
    assert expires_at is not None  # this UPDATE just wrote it
    return Lease(chunk_id, job_id, item_id, start, stop, attempt, expires_at, retry_base)


def _fenced(lease: Lease) -> object:
    return and_(
        Chunk.id == lease.chunk_id, Chunk.attempt == lease.attempt, Chunk.status == ChunkStatus.LEASED
    )


def assert_lease(session: Session, lease: Lease) -> None:
    """Raise `StaleAttemptError` unless `lease` still holds its chunk; locks the chunk row on PostgreSQL.

    Call it first in a transaction whose other writes (image rows) must come from the lease holder only.
    """
    result = session.execute(
        update(Chunk)
        .where(_fenced(lease))  # type: ignore[arg-type]
        .values(leased_by=Chunk.leased_by)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleAttemptError(f"chunk {lease.chunk_id}: attempt {lease.attempt} no longer holds the lease")


def renew_lease(
    session: Session, lease: Lease, *, lease_seconds: float = LEASE_SECONDS, now: dt.datetime | None = None
) -> Lease:
    """Extend a live lease (long chunks call this between batches); raises `StaleAttemptError` if lost.

    A lease that has already expired can still be renewed as long as no other attempt claimed the chunk.
    The new expiry is `lease_seconds` from now on the lease clock (the database's on PostgreSQL); `now`
    stands in for it (tests).
    """
    expires_at = session.execute(
        update(Chunk)
        .where(_fenced(lease))  # type: ignore[arg-type]
        .values(lease_expires_at=_written_time(session, now, dt.timedelta(seconds=lease_seconds)))
        .returning(Chunk.lease_expires_at)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if expires_at is None:
        raise StaleAttemptError(f"chunk {lease.chunk_id}: attempt {lease.attempt} lost its lease")
    return dataclasses.replace(lease, expires_at=expires_at)


def complete_chunk(
    session: Session,
    lease: Lease,
    *,
    done: int,
    failed: int = 0,
    rejected: int = 0,
    now: dt.datetime | None = None,
) -> JobProgress:
    """Mark the chunk succeeded and add its counts to the job, in the caller's transaction.

    Fenced: raises `StaleAttemptError` when the lease was lost, so counters move exactly once per chunk.
    """
    result = session.execute(
        update(Chunk)
        .where(_fenced(lease))  # type: ignore[arg-type]
        .values(
            status=ChunkStatus.SUCCEEDED,
            lease_expires_at=None,
            finished_at=now or utcnow(),
            images_done=done,
            images_failed=failed,
            images_rejected=rejected,
            last_error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleAttemptError(
            f"chunk {lease.chunk_id}: attempt {lease.attempt} cannot complete, lease lost"
        )
    return bump_job_counters(session, lease.job_id, done=done, failed=failed, rejected=rejected)


def release_chunk(
    session: Session, lease: Lease, *, error: str | None = None, refund_attempt: bool = False
) -> bool:
    """Give the lease back at once (graceful shutdown, retryable failure): the chunk is pending again.

    `refund_attempt` (a graceful shutdown: the chunk did not fail) gives the claim back to the chunk's budget
    of `max_attempts` by raising `retry_base`; `attempt`, the fencing token, still only grows, so the
    released attempt stays fenced out. Returns False when the lease was already lost (nothing to release).
    """
    values: dict[str, Any] = {
        "status": ChunkStatus.PENDING,
        "lease_expires_at": None,
        "leased_by": None,
        "last_error": error,
    }
    if refund_attempt:
        values["retry_base"] = Chunk.retry_base + 1
    result = session.execute(
        update(Chunk)
        .where(_fenced(lease))  # type: ignore[arg-type]
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def cancel_chunk(session: Session, chunk_id: int, *, attempt: int | None = None) -> bool:
    """Mark a not-yet-finished chunk cancelled (fenced by `attempt` when given); returns True if it changed."""
    query = update(Chunk).where(
        Chunk.id == chunk_id, Chunk.status.in_([ChunkStatus.PENDING, ChunkStatus.LEASED])
    )
    if attempt is not None:
        query = query.where(Chunk.attempt == attempt)
    result = session.execute(
        query.values(
            status=ChunkStatus.CANCELLED, lease_expires_at=None, finished_at=utcnow()
        ).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def mark_quarantined(session: Session, chunk_id: int, *, error: str, attempt: int | None = None) -> bool:
    """Move a pending or leased chunk to quarantined (fenced by `attempt` when given).

    Only the status changes here; the caller (the worker or the reaper) writes the failed image rows and
    bumps the job counters in the same transaction. Returns True when this call made the change.
    """
    query = update(Chunk).where(
        Chunk.id == chunk_id, Chunk.status.in_([ChunkStatus.PENDING, ChunkStatus.LEASED])
    )
    if attempt is not None:
        query = query.where(Chunk.attempt == attempt)
    result = session.execute(
        query.values(
            status=ChunkStatus.QUARANTINED, lease_expires_at=None, last_error=error, finished_at=utcnow()
        ).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def find_expired_leases(
    session: Session, *, now: dt.datetime | None = None, limit: int = 1000
) -> Sequence[Chunk]:
    """Chunks whose lease ran out: their worker died or hung. The reaper re-enqueues or quarantines them.

    On PostgreSQL the rows are locked for the caller's transaction, skipping rows another transaction holds:
    a worker frozen inside its write transaction (a paused VM, a stopped process) keeps its chunk's row lock,
    and the reaper must go on repairing every other chunk instead of waiting on it. That chunk is taken up
    on a later pass, once the frozen transaction ends. (SQLite has no row locks; it serializes writers.)
    Expired means on the lease clock (the database's on PostgreSQL), whatever this host's clock says; `now`
    stands in for it (tests).
    """
    return session.scalars(
        select(Chunk)
        .where(Chunk.status == ChunkStatus.LEASED, Chunk.lease_expires_at < lease_clock(session, now=now))
        .order_by(Chunk.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()


def find_stale_pending(
    session: Session, *, enqueued_before: dt.datetime, limit: int = 1000
) -> Sequence[Chunk]:
    """Pending chunks published before `enqueued_before` (their message may be lost, e.g. Redis restarted empty)."""
    return session.scalars(
        select(Chunk)
        .where(
            Chunk.status == ChunkStatus.PENDING,
            or_(Chunk.enqueued_at.is_(None), Chunk.enqueued_at < enqueued_before),
        )
        .order_by(Chunk.id)
        .limit(limit)
    ).all()


def mark_enqueued(session: Session, chunk_ids: Sequence[int], *, now: dt.datetime | None = None) -> None:
    """Record when the chunks' messages were (re)published, so the reaper can tell lost messages apart.

    On the lease clock (the database's on PostgreSQL), which the reaper's lost-message threshold reads too.
    """
    if chunk_ids:
        session.execute(
            update(Chunk)
            .where(Chunk.id.in_(chunk_ids))
            .values(enqueued_at=_written_time(session, now))
            .execution_options(synchronize_session=False)
        )
