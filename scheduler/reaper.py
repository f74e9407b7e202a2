"""The reaper: repairs the pipeline from SQL, the source of truth, whatever the broker lost.

One `reap_once` pass, every few seconds from `catalogan beat`:

1. expired leases (a worker died or hung): quarantine at `max_attempts`, else release and re-publish;
2. pending chunks out of attempts (a worker released its last one): quarantine;
3. lost messages: pending chunks published more than `republish_after_seconds` ago are re-published, but
   only for a queue whose broker depth is at most `queue_short_threshold` — while a queue still holds
   messages, an old pending chunk is just waiting its turn, and re-publishing would flood the queue. When
   Redis restarted empty (or a publish after commit never happened), the queue is empty and every stale
   pending chunk goes back in, once per `republish_after_seconds`;
4. cancelling jobs: their pending chunks are cancelled (counted), so they finish without a worker;
5. stragglers: a job whose chunks are all finished but which is not terminal (a crash between the last
   chunk's commit and its finalize) gets a `finalize_job` task, at most once per `finalize_grace_seconds`;
6. dead finalize writes: a `finalize_writes` row seen for `finalize_write_timeout_seconds` is a finalize that
   died while writing a job's manifests, perhaps stale ones over fresher ones (`workers.finalize`); the job
   gets a `finalize_job` task that supersedes those rows: it writes the manifests again from the rows as they
   are now, even for a job already finished, and deletes them. At most once per timeout per row;
7. publish windows: a tenant with held chunks (pending, never published: `db.publish_window`) gets as many
   published as its window has room for, when a crash (or a cancelled chunk) kept a worker from refilling it.

A separate step, `delete_expired_jobs` (its own thread in `catalogan beat`, every
`retention_interval_seconds`), deletes finished jobs past their `expires_at` (retention, or a DELETE that did
not finish): objects first, with no database connection held while the store deletes, then rows
(`db.job_deletion`). At most `retention_objects_per_pass` objects per pass: a larger job finishes over several
passes. A job that is not finished never has an `expires_at` in the past (it is set when the job finishes), so
a running job is never reaped.

Steps 1 and 2 lock the chunk rows they repair with `SKIP LOCKED` (PostgreSQL): a worker frozen inside its
write transaction holds its chunk's row lock, and the reaper skips that one chunk instead of stalling every job.

Steps 1 and 3 compare lease expiries and publish times on the lease clock (`db.chunks.lease_clock`: the
database server's on PostgreSQL), never this host's: a reaper whose clock runs ahead must not reclaim live
leases, nor one whose clock runs behind keep dead ones. Steps 5 and 6 measure their waits on this host's clock only
(first seen and now are both read here), so skew between hosts does not enter them.

Torch-free and broker-agnostic: it publishes by task name through `db.messaging`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import cancel_pending_chunks, quarantine_chunk
from db.chunks import Lease, find_expired_leases, lease_clock, mark_enqueued, release_chunk
from db.engine import transaction
from db.job_deletion import DeletedJob, expired_jobs, purge_job
from db.jobs import JobProgress
from db.messaging import QUEUE_NAMES, Publisher
from db.pipeline_settings import ReaperSettings
from db.publish_window import held_windows, publish_window_chunks, refill
from db.status import JOB_TERMINAL, ChunkStatus
from db.storage.base import ObjectStore
from db.tables import Chunk, FinalizeWrite, Job, utcnow

logger = logging.getLogger(__name__)

QueueDepth = Callable[[str], int]


class FinalizePublisher(Protocol):
    """Publishes a `finalize_job` task for a job to a queue; `superseding` names dead finalizes' writes."""

    def __call__(self, queue: str, job_id: str, *, superseding: Sequence[str] = ()) -> None: ...


@dataclass
class ReapReport:
    """What one pass did (chunk and job ids), for logs and tests."""

    requeued: list[int] = field(default_factory=list)
    quarantined: list[int] = field(default_factory=list)
    republished: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    finalize_published: list[str] = field(default_factory=list)
    finalize_rewrites: list[str] = field(default_factory=list)  # jobs whose manifests are written again
    refilled: list[int] = field(default_factory=list)  # held chunks published into their tenant's window

    @property
    def empty(self) -> bool:
        """True when the pass changed nothing."""
        return not (
            self.requeued
            or self.quarantined
            or self.republished
            or self.cancelled
            or self.finalize_published
            or self.finalize_rewrites
            or self.refilled
        )


def _lease_of(chunk: Chunk) -> Lease:
    assert chunk.lease_expires_at is not None
    return Lease(
        chunk.id,
        chunk.job_id,
        chunk.item_id,
        chunk.start_index,
        chunk.stop_index,
        chunk.attempt,
        chunk.lease_expires_at,
        chunk.retry_base,
    )


class Reaper:
    """Repairs chunks and jobs; holds only the in-memory times stragglers and finalize writes were first seen."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        publisher: Publisher,
        publish_finalize: FinalizePublisher,
        queue_depth: QueueDepth,
        settings: ReaperSettings | None = None,
        publish_window: int | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.publish_window = publish_window if publish_window is not None else publish_window_chunks()
        self.publisher = publisher
        self.publish_finalize = publish_finalize
        self.queue_depth = queue_depth
        self.settings = settings or ReaperSettings()
        self._stragglers = _FirstSeen()  # job ids
        self._writes = _FirstSeen()  # finalize_writes row ids

    def reap_once(self, now: dt.datetime | None = None) -> ReapReport:
        """One repair pass; each step commits on its own and runs even when an earlier one failed (with Redis
        down, republishing fails but cancelled jobs still finish); the first failure is raised at the end, so
        the pass still counts as failed (`beat --check-heartbeat`).

        Leases and publish times are judged on the lease clock (the database's on PostgreSQL); `now`, when
        given, stands in for it and for this host's clock (tests)."""
        report = ReapReport()
        finished: set[str] = set()
        steps: list[Callable[[], None]] = [
            lambda: self._expired(now, report, finished),
            lambda: self._exhausted_pending(report, finished),
            lambda: self._lost_messages(now, report),
            lambda: self._cancelling(report, finished),
            lambda: self._finalize_stragglers(now or utcnow(), report, finished),
            lambda: self._dead_finalize_writes(now or utcnow(), report),
            lambda: self._refill_windows(report),
        ]
        failure: Exception | None = None
        for step in steps:
            try:
                step()
            except Exception as exc:  # the other steps still run; the pass is reported failed below
                # One line (a driver's error spans several); the traceback at debug.
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                logger.warning("reaper step failed: %s", first)
                logger.debug("reaper step failed", exc_info=exc)
                failure = failure or exc
        if not report.empty:
            logger.info(
                "reaper: requeued=%d quarantined=%d republished=%d cancelled=%d finalize=%d rewrite=%d refill=%d",
                len(report.requeued),
                len(report.quarantined),
                len(report.republished),
                len(report.cancelled),
                len(report.finalize_published),
                len(report.finalize_rewrites),
                len(report.refilled),
            )
        if failure is not None:
            raise failure
        return report

    def _publish(self, by_queue: dict[str, list[int]], now: dt.datetime | None) -> None:
        for queue, chunk_ids in by_queue.items():
            self.publisher(queue, chunk_ids)
            with transaction(self.session_factory) as session:
                mark_enqueued(session, chunk_ids, now=now)

    def _quarantine(
        self, session: Session, chunk: Chunk, error: str, report: ReapReport, finished: set[str]
    ) -> None:
        progress = quarantine_chunk(session, chunk.id, error=error, attempt=chunk.attempt)
        if progress is not None:
            report.quarantined.append(chunk.id)
            _note_finished(progress, chunk.job_id, finished)

    def _expired(self, now: dt.datetime | None, report: ReapReport, finished: set[str]) -> None:
        by_queue: dict[str, list[int]] = defaultdict(list)
        with transaction(self.session_factory) as session:
            for chunk in find_expired_leases(session, now=now, limit=self.settings.reaper_batch_limit):
                error = f"lease expired (attempt {chunk.attempt}, worker {chunk.leased_by})"
                if chunk.attempt - chunk.retry_base >= self.settings.max_attempts:
                    attempts = chunk.attempt - chunk.retry_base
                    self._quarantine(
                        session, chunk, f"{error}; gave up after {attempts} attempts", report, finished
                    )
                elif release_chunk(session, _lease_of(chunk), error=error):
                    by_queue[_queue_of(session, chunk.job_id)].append(chunk.id)
                    report.requeued.append(chunk.id)
        self._publish(by_queue, now)

    def _exhausted_pending(self, report: ReapReport, finished: set[str]) -> None:
        with transaction(self.session_factory) as session:
            chunks = session.scalars(
                select(Chunk)
                .where(
                    Chunk.status == ChunkStatus.PENDING,
                    Chunk.attempt - Chunk.retry_base >= self.settings.max_attempts,
                )
                .limit(self.settings.reaper_batch_limit)
                .with_for_update(skip_locked=True)  # as in find_expired_leases: never wait on a frozen writer
            ).all()
            for chunk in chunks:
                error = chunk.last_error or "failed"
                self._quarantine(
                    session, chunk, f"{error}; gave up after {chunk.attempt} attempts", report, finished
                )

    def _lost_messages(self, now: dt.datetime | None, report: ReapReport) -> None:
        age = dt.timedelta(seconds=self.settings.republish_after_seconds)
        by_queue: dict[str, list[int]] = defaultdict(list)
        for queue in QUEUE_NAMES:
            if self.queue_depth(queue) > self.settings.queue_short_threshold:
                continue  # the queue still holds messages: old pending chunks are waiting their turn
            with self.session_factory() as session:
                cutoff = lease_clock(session, now=now, offset=-age)
                rows = session.execute(
                    select(Chunk.id)
                    .join(Job, Job.id == Chunk.job_id)
                    .where(
                        Job.queue == queue,
                        Job.cancel_requested.is_(False),
                        Chunk.status == ChunkStatus.PENDING,
                        Chunk.enqueued_at < cutoff,  # a held chunk (never published) is step 7's
                    )
                    .order_by(Chunk.id)
                    .limit(self.settings.reaper_batch_limit)
                ).scalars()
                by_queue[queue].extend(rows)
        self._publish({queue: ids for queue, ids in by_queue.items() if ids}, now)
        for ids in by_queue.values():
            report.republished.extend(ids)

    def _cancelling(self, report: ReapReport, finished: set[str]) -> None:
        with transaction(self.session_factory) as session:
            job_ids = session.scalars(
                select(Job.id).where(Job.cancel_requested.is_(True), Job.status.not_in(JOB_TERMINAL))
            ).all()
            for job_id in job_ids:
                before = set(_pending_ids(session, job_id))
                progress = cancel_pending_chunks(session, job_id, limit=self.settings.reaper_batch_limit)
                report.cancelled.extend(sorted(before))
                if progress is not None:
                    _note_finished(progress, job_id, finished)

    def _finalize_stragglers(self, now: dt.datetime, report: ReapReport, finished: set[str]) -> None:
        with self.session_factory() as session:
            rows = session.execute(
                select(Job.id, Job.queue).where(
                    Job.status.not_in(JOB_TERMINAL), Job.chunks_finished >= Job.chunks_total
                )
            ).all()
        queues = {job_id: queue for job_id, queue in rows}
        grace = dt.timedelta(seconds=self.settings.finalize_grace_seconds)
        # The reaper itself just finished some (quarantine, cancel): those are finalized at once.
        for job_id in self._stragglers.due(queues, now, grace, at_once=finished):
            self.publish_finalize(queues[job_id], job_id)
            report.finalize_published.append(job_id)

    def _refill_windows(self, report: ReapReport) -> None:
        with self.session_factory() as session:
            windows = held_windows(session, limit=self.settings.reaper_batch_limit)
        for tenant_id, queue in windows:
            ids = refill(self.session_factory, self.publisher, tenant_id, queue, window=self.publish_window)
            report.refilled.extend(ids)

    def _dead_finalize_writes(self, now: dt.datetime, report: ReapReport) -> None:
        with self.session_factory() as session:
            rows = session.execute(
                select(FinalizeWrite.id, FinalizeWrite.job_id, Job.queue)
                .join(Job, Job.id == FinalizeWrite.job_id)
                .order_by(FinalizeWrite.created_at)
                .limit(self.settings.reaper_batch_limit)
            ).all()
        jobs = {write_id: (queue, job_id) for write_id, job_id, queue in rows}
        timeout = dt.timedelta(seconds=self.settings.finalize_write_timeout_seconds)
        dead: dict[tuple[str, str], list[str]] = defaultdict(list)
        # Once per timeout: the task may be lost, or the job not ready yet.
        for write_id in self._writes.due(jobs, now, timeout):
            dead[jobs[write_id]].append(write_id)
        for (queue, job_id), write_ids in dead.items():
            self.publish_finalize(queue, job_id, superseding=write_ids)
            report.finalize_rewrites.append(job_id)


class _FirstSeen:
    """When this reaper first saw each key, on its own clock (skew between hosts never enters a wait)."""

    def __init__(self) -> None:
        self.since: dict[str, dt.datetime] = {}

    def due(
        self, keys: Iterable[str], now: dt.datetime, wait: dt.timedelta, *, at_once: Container[str] = ()
    ) -> list[str]:
        """The keys seen now that have waited `wait` since first seen or last due (or are in `at_once`), in
        order; each due one waits again from now, and keys no longer seen are forgotten."""
        seen = list(keys)
        due = []
        for key in seen:
            first = self.since.setdefault(key, now)
            if key in at_once or now - first >= wait:
                due.append(key)
                self.since[key] = now
        for key in self.since.keys() - set(seen):
            del self.since[key]
        return due


def delete_expired_jobs(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    settings: ReaperSettings | None = None,
    *,
    now: dt.datetime | None = None,
) -> list[DeletedJob]:
    """One retention pass: delete the objects, then the rows, of finished jobs past their `expires_at`.

    At most `retention_jobs_per_pass` jobs and `retention_objects_per_pass` objects; each job's rows go once
    its prefix is empty (`finished`), otherwise the next pass carries on where this one stopped.
    """
    settings = settings or ReaperSettings()
    now = now or utcnow()
    budget = settings.retention_objects_per_pass
    results: list[DeletedJob] = []
    for job_id, tenant_id in expired_jobs(session_factory, now=now, limit=settings.retention_jobs_per_pass):
        if budget <= 0:
            break
        result = purge_job(session_factory, store, job_id, tenant_id=tenant_id, max_objects=budget, now=now)
        budget -= result.objects_deleted
        results.append(result)
    if results:
        logger.info(
            "retention: %d expired job(s) deleted, %d in progress, %d objects",
            sum(result.finished for result in results),
            sum(not result.finished for result in results),
            sum(result.objects_deleted for result in results),
        )
    return results


def _note_finished(progress: JobProgress, job_id: str, finished: set[str]) -> None:
    if progress.all_chunks_finished:
        finished.add(job_id)


def _queue_of(session: Session, job_id: str) -> str:
    return str(session.scalar(select(Job.queue).where(Job.id == job_id)) or "bulk")


def _pending_ids(session: Session, job_id: str) -> Sequence[int]:
    return session.scalars(
        select(Chunk.id).where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.PENDING)
    ).all()


__all__ = ["ReapReport", "Reaper", "delete_expired_jobs"]
