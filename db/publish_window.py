"""The per-tenant publish window: how one tenant's large job shares the queue with other tenants' jobs.

The broker's queues are first in, first out. If every chunk of a job went to the queue at submit, another
tenant's job submitted a moment later would wait behind all of them (`bench/bench_fairness.py`: a 10-image job
took 1.8 s alone and 102 s behind a 100,000-image one). So a tenant has at most `publish_window_chunks`
chunks published and unfinished per queue; the rest of its chunks wait in SQL, pending with no `enqueued_at`
("held"). A submit publishes what its tenant's window has room for; a worker that finishes a chunk publishes
the tenant's next held ones (`refill`); the reaper refills windows a crash left short. Another tenant's first
chunk then waits behind at most one window of each busy tenant's chunks, not behind whole jobs.

The window is counted and filled with the tenant's row locked (PostgreSQL; SQLite serializes every write), so
two workers finishing at once do not both take the same room. Chunks are marked published (`enqueued_at`)
before the message is sent: a send that fails leaves them to the reaper's lost-message step, as a lost
message would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.chunks import mark_enqueued
from db.engine import read_only_session_factory, transaction
from db.status import JOB_TERMINAL, ChunkStatus
from db.tables import Chunk, Job, Tenant

logger = logging.getLogger(__name__)


def publish_window_chunks() -> int:
    """The operator's window (`CATALOGAN_PUBLISH_WINDOW_CHUNKS`), read where chunks are published."""
    from db.pipeline_settings import PublishWindowSettings  # pydantic-settings: only where it is needed

    return PublishWindowSettings().publish_window_chunks


def _active_chunks(tenant_id: str, queue: str) -> Any:
    return (
        select(Chunk.id)
        .join(Job, Job.id == Chunk.job_id)
        .where(Job.tenant_id == tenant_id, Job.queue == queue, Job.status.not_in(JOB_TERMINAL))
    )


def in_flight(session: Session, tenant_id: str, queue: str) -> int:
    """The tenant's chunks in `queue` that are published and not finished (pending with a message, or leased)."""
    query = _active_chunks(tenant_id, queue).where(
        Chunk.status.in_([ChunkStatus.PENDING, ChunkStatus.LEASED]), Chunk.enqueued_at.is_not(None)
    )
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def _held(tenant_id: str, queue: str) -> Any:
    """The tenant's held chunks in `queue`: pending, never published, of jobs not being cancelled."""
    return _active_chunks(tenant_id, queue).where(
        Chunk.status == ChunkStatus.PENDING, Chunk.enqueued_at.is_(None), Job.cancel_requested.is_(False)
    )


def _has_held(session_factory: sessionmaker[Session], tenant_id: str, queue: str) -> bool:
    with read_only_session_factory(session_factory)() as session:
        return session.scalar(_held(tenant_id, queue).limit(1)) is not None


def take_publish_slots(session: Session, tenant_id: str, queue: str, *, window: int) -> list[int]:
    """With the tenant's row locked: mark up to the window's room of the tenant's held chunks in `queue` as
    published (oldest first, jobs being cancelled skipped) and return their ids, to send after the commit."""
    session.scalars(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update()).one_or_none()
    room = window - in_flight(session, tenant_id, queue)
    if room <= 0:
        return []
    ids = list(session.scalars(_held(tenant_id, queue).order_by(Chunk.id).limit(room)))
    mark_enqueued(session, ids)
    return ids


def refill(
    session_factory: sessionmaker[Session],
    publisher: Any,
    tenant_id: str,
    queue: str,
    *,
    window: int,
    on_send_failure: Callable[[Exception], None] | None = None,
) -> list[int]:
    """Publish the tenant's next held chunks in `queue`, as many as its window has room for; returns the ids the
    broker took (none when the send failed).

    A failed send is not raised: the chunks stay marked published and the reaper republishes them. It is logged
    in one line (the traceback at debug: a broker outage is not a bug, and every refill during one would print
    a page of kombu frames), or handed to `on_send_failure` instead, for a caller that reports it in its own
    words (`catalogan dlq retry`). A tenant with nothing held (most jobs fit in the window) costs one read: no
    lock, no count."""
    if not _has_held(session_factory, tenant_id, queue):
        return []
    with transaction(session_factory) as session:
        ids = take_publish_slots(session, tenant_id, queue, window=window)
    if ids:
        try:
            publisher(queue, ids)
        except Exception as exc:
            if on_send_failure is not None:
                on_send_failure(exc)
            else:
                first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
                logger.warning(
                    "publishing %d chunks of tenant %s failed (%s: %s); the reaper will publish them",
                    len(ids),
                    tenant_id,
                    type(exc).__name__,
                    first_line,
                )
                logger.debug("the failed publish", exc_info=True)
            return []
    return ids


def held_windows(session: Session, *, limit: int) -> Sequence[tuple[str, str]]:
    """(tenant id, queue) pairs that have held chunks of unfinished jobs not being cancelled (the reaper's)."""
    return session.execute(
        select(Job.tenant_id, Job.queue)
        .join(Chunk, Chunk.job_id == Job.id)
        .where(
            Job.status.not_in(JOB_TERMINAL),
            Job.cancel_requested.is_(False),
            Chunk.status == ChunkStatus.PENDING,
            Chunk.enqueued_at.is_(None),
        )
        .group_by(Job.tenant_id, Job.queue)
        .limit(limit)
    ).all()
