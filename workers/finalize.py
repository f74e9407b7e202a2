"""Finishing a job once its last chunk is done: manifests, final status, webhook outbox row.

Idempotent and race-safe: the manifest bytes depend only on the image rows (no timestamps), the status
change is a guarded UPDATE, and only the call that made the change inserts the webhook row. Called inline
by the worker that completed the last chunk, and as the `finalize_job` task the reaper publishes when a
crash came between that commit and this.

In three steps, so that no SQL transaction (on SQLite: the database's write lock, as every transaction there
begins IMMEDIATE) and no pooled connection is held while the object store writes:

1. read: the job, "no unfinished chunk", the chunks' claim count, and the manifests built from the image rows,
   each page of rows read in its own short transaction (`build_manifests`);
2. write the manifests (and a tar job's shard index) to the store, with no connection, from temporary files
   (`spool`: in memory when small, on disk when large, so no job's size sets the worker's memory);
3. finish, in one transaction with the job row locked: unless a chunk was reopened (a retry: its own finalize
   comes later) or claimed again since step 1 (a rerun changed the rows: the manifests written in step 2 may
   be stale, even written over fresher ones, so all three steps run again), set the status and the manifest
   key and put the webhook row in the outbox.

Before its first write a finalize records itself (a `finalize_writes` row, in its own short transaction) and
step 3 deletes that row. A finalize that died between a stale write and the check that would have made it
write again leaves its row behind; the reaper then asks for a finalize that supersedes it (`superseding`):
that one reads the rows as they are now, even of a job already finished, writes the manifests over whatever
the dead one left, and deletes the dead one's row with its own.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar, cast

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.engine import read_only_session_factory, transaction
from db.errors import NotFoundError
from db.images import iter_image_fields, manifest_keys
from db.incremental import SKIPPED_EXISTING_STATUS, iter_skipped_images
from db.jobs import get_job, mark_job_running, transition_job
from db.status import CHUNK_TERMINAL, JobStatus
from db.storage import ObjectStore
from db.tables import Chunk, FinalizeWrite, Job, ModelVersion, Tenant, WebhookDelivery, utcnow
from db.webhook_events import job_event_data, wants_event
from workers.errors import FinalizeConflictError
from workers.shards import SHARD_FORMAT, ShardRow, put_shard_index, shard_index_rows

logger = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST_BATCH_ROWS = 50_000
# A job's manifests up to this size are built in memory; larger ones in temporary files (a million images
# make about 300 MB of JSONL), from which the store uploads them a part at a time.
MANIFEST_SPOOL_BYTES = 8 << 20
# Times finalize reads, writes and checks again when the job's chunks were claimed again meanwhile: each new
# pass needs another rerun to have finished in between, so a few are plenty.
MAX_FINALIZE_PASSES = 10
MANIFEST_COLUMNS = pa.schema(
    [
        ("index", pa.int64()),
        ("sku", pa.string()),
        ("category", pa.string()),
        ("key", pa.string()),
        ("sha256", pa.string()),
        ("seed", pa.int64()),
        ("model_version", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("score", pa.float64()),
        ("redraws", pa.int64()),
    ]
)


def manifest_rows(session: Session, job: Job, model_ref: str) -> Iterator[dict[str, Any]]:
    """One manifest record per image row of the job, in index order, then one per already-delivered image.

    Items skipped as already delivered (`db.incremental`) are listed after the job's own images with status
    `skipped_existing`; their `index` and `key` are those of the earlier job that made them.
    """
    seed = int(job.seed)
    for index, sku, category, key, sha256, status, error, score, redraws in iter_image_fields(
        session, job.id
    ):
        yield {
            "index": int(index),
            "sku": sku,
            "category": category,
            "key": key,
            "sha256": sha256,
            "seed": seed,
            "model_version": model_ref,
            "status": status.value,
            "error": error,
            "score": score,
            "redraws": int(redraws or 0),
        }
    # Items skipped as already delivered: their earlier images (keys and indices of the earlier job).
    for _item, image in iter_skipped_images(session, job):
        yield {
            "index": int(image.index),
            "sku": image.sku,
            "category": image.category,
            "key": image.key,
            "sha256": image.sha256,
            "seed": int(job.seed),
            "model_version": model_ref,
            "status": SKIPPED_EXISTING_STATUS,
            "error": None,
            "score": image.score,
            "redraws": int(image.redraws or 0),
        }


def _between_reads(session: Session, rows: Iterator[T]) -> Iterator[T]:
    """`rows`, with the session's transaction ended after each row that began one: a page of rows is read in
    its own short transaction (on SQLite: the write lock, which every transaction there takes), and no
    transaction or pooled connection is held while the rows are encoded."""
    for row in rows:
        if session.in_transaction():
            session.commit()
        yield row


def build_manifests(
    session: Session, job: Job, jsonl: BinaryIO, parquet: BinaryIO, *, release_between_reads: bool = False
) -> None:
    """Write the job's `manifest.jsonl` and `manifest.parquet` into `jsonl` and `parquet`, from its image rows.

    Rows stream from SQL in batches: the JSONL is written a batch at a time and the Parquet file one row group
    per batch, so a million-image job never holds a million Python dicts, nor (written to `spool()` files)
    its manifests in memory. With `release_between_reads`, the session's transaction is ended after each page
    of rows (it must hold no changes of its own).
    """
    model_version = session.get(ModelVersion, job.model_version_id)
    assert model_version is not None
    model_ref = f"{model_version.name}@{model_version.version}"
    rows = manifest_rows(session, job, model_ref)
    if release_between_reads:
        rows = _between_reads(session, rows)
    batch: list[dict[str, Any]] = []
    with pq.ParquetWriter(parquet, MANIFEST_COLUMNS, compression="zstd") as writer:
        for row in rows:
            batch.append(row)
            if len(batch) >= MANIFEST_BATCH_ROWS:
                _write_batch(batch, jsonl, writer)
                batch = []
        _write_batch(batch, jsonl, writer)


def _write_batch(batch: list[dict[str, Any]], jsonl: BinaryIO, writer: pq.ParquetWriter) -> None:
    jsonl.write(
        b"".join(json.dumps(row, sort_keys=True, separators=(",", ":")).encode() + b"\n" for row in batch)
    )
    writer.write_table(pa.Table.from_pylist(batch, schema=MANIFEST_COLUMNS))


def spool() -> BinaryIO:
    """A temporary file for a manifest: in memory up to `MANIFEST_SPOOL_BYTES`, on disk beyond."""
    return cast(BinaryIO, tempfile.SpooledTemporaryFile(max_size=MANIFEST_SPOOL_BYTES))


def put_manifests(store: ObjectStore, tenant_id: str, job_id: str, jsonl: BinaryIO, parquet: BinaryIO) -> str:
    """Write `manifest.jsonl` and `manifest.parquet` (files, read from their start: `ObjectStore.put_file`)
    next to the job's images; returns the JSONL key."""
    jsonl_key, parquet_key = manifest_keys(tenant_id, job_id)
    store.put_file(jsonl_key, jsonl, content_type="application/x-ndjson")
    store.put_file(parquet_key, parquet, content_type="application/vnd.apache.parquet")
    return jsonl_key


def write_manifests(session: Session, store: ObjectStore, job: Job) -> str:
    """Build the job's manifests from `session` and write them; returns the JSONL key (outside finalize:
    finalize itself writes with no session open)."""
    with spool() as jsonl, spool() as parquet:
        build_manifests(session, job, jsonl, parquet)
        return put_manifests(store, job.tenant_id, job.id, jsonl, parquet)


def final_status(job: Job) -> JobStatus:
    """cancelled when someone cancelled it; with failed images, completed_with_failures when others were
    delivered (done or rejected by the quality gate) and failed when none was; else succeeded."""
    if job.cancel_requested:
        return JobStatus.CANCELLED
    if job.images_failed > 0:
        if job.images_done + job.images_rejected > 0:
            return JobStatus.COMPLETED_WITH_FAILURES
        return JobStatus.FAILED
    return JobStatus.SUCCEEDED


def _claims(session: Session, job_id: str) -> tuple[int, int]:
    """(chunks, claims of them so far): every rerun claims a chunk again (its attempt grows by one), and no
    image row of a finished chunk changes without one, so an unchanged pair means unchanged manifests."""
    count, attempts = session.execute(
        select(func.count(), func.coalesce(func.sum(Chunk.attempt), 0)).where(Chunk.job_id == job_id)
    ).one()
    return int(count), int(attempts)


def _unfinished_chunks(session: Session, job_id: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Chunk)
            .where(Chunk.job_id == job_id, Chunk.status.not_in(CHUNK_TERMINAL))
        )
        or 0
    )


@dataclass(frozen=True, slots=True)
class _Manifests:
    """A job's manifests as read in step 1, and the claim count they were read at."""

    tenant_id: str
    claims: tuple[int, int]
    jsonl: BinaryIO  # `spool()` files, closed by `close`
    parquet: BinaryIO
    shards: list[ShardRow] | None  # a tar job's shard index rows

    def close(self) -> None:
        self.jsonl.close()
        self.parquet.close()


class _ClaimedAgain(Exception):
    """Raised by step 3 when the job's chunks were claimed again since step 1 (nothing is changed)."""


class _Expired(Exception):
    """Raised by step 3 when the finished job is being deleted (its `expires_at` has passed): the retention
    pass may have listed the job's objects before step 2 wrote, so what was written must go."""

    def __init__(self, status: JobStatus) -> None:
        super().__init__(status.value)
        self.status = status


def _being_deleted(job: Job) -> bool:
    """True once a finished job's `expires_at` has passed: the retention pass deletes its objects, then rows."""
    return job.expires_at is not None and job.expires_at <= utcnow()


def _record_write(session_factory: sessionmaker[Session], job_id: str) -> str:
    """Before the first store write: the `finalize_writes` row step 3 deletes; returns its id."""
    write_id = uuid.uuid4().hex
    try:
        with transaction(session_factory) as session:
            session.add(FinalizeWrite(id=write_id, job_id=job_id))
    except IntegrityError as exc:  # the job's rows were deleted since step 1
        raise NotFoundError(f"job {job_id!r} not found") from exc
    return write_id


def _forget_writes(session: Session, job_id: str, write_ids: Sequence[str]) -> None:
    """Delete the `finalize_writes` rows this finalize has written over (its own, those it supersedes)."""
    if write_ids:
        session.execute(
            delete(FinalizeWrite).where(FinalizeWrite.job_id == job_id, FinalizeWrite.id.in_(list(write_ids)))
        )


def _read_manifests(
    session_factory: sessionmaker[Session], job_id: str, *, again: bool
) -> _Manifests | JobStatus | None:
    """Step 1: the manifests of a job whose chunks are all finished; its status when it is already terminal
    (unless `again`: a pass that must write over manifests it may have left stale), None when not ready.
    Read-only: on SQLite its transactions begin DEFERRED and take no lock (`read_only_session_factory`)."""
    with read_only_session_factory(session_factory)() as session:
        job = get_job(session, job_id)
        if job.status.is_terminal and (not again or _being_deleted(job)):
            return job.status
        if _unfinished_chunks(session, job_id) > 0:
            logger.info("job not finished yet; finalize skipped", extra={"job_id": job_id})
            return None
        claims = _claims(session, job_id)
        shards = shard_index_rows(session, job) if job.output_format == SHARD_FORMAT else None
        manifests = _Manifests(job.tenant_id, claims, spool(), spool(), shards)
        try:
            build_manifests(session, job, manifests.jsonl, manifests.parquet, release_between_reads=True)
        except BaseException:
            manifests.close()
            raise
        return manifests


def _write_manifests(store: ObjectStore, job_id: str, manifests: _Manifests) -> list[str]:
    """Step 2 (no session open): the manifests, then a tar job's shard index; returns the keys written."""
    keys = [put_manifests(store, manifests.tenant_id, job_id, manifests.jsonl, manifests.parquet)]
    keys.append(manifest_keys(manifests.tenant_id, job_id)[1])
    if manifests.shards is not None:
        keys.append(put_shard_index(store, manifests.tenant_id, job_id, manifests.shards))
    return keys


def _finish(
    session_factory: sessionmaker[Session],
    job_id: str,
    manifests: _Manifests,
    manifest_key: str,
    written_over: Sequence[str],
) -> JobStatus | None:
    """Step 3, with the job row locked: the final status, or None when a chunk was reopened; raises
    `_ClaimedAgain` when a chunk was claimed again since step 1 (its `finalize_writes` rows stay), `_Expired`
    when the finished job is being deleted. Otherwise deletes the `written_over` rows with the change."""
    with transaction(session_factory) as session:
        job = get_job(session, job_id, for_update=True)
        # A retry (which takes the same lock) may have put a quarantined chunk back to pending while the
        # manifests were written; that chunk's own finalize comes later and writes them again.
        if _unfinished_chunks(session, job_id) > 0:
            logger.info("a chunk was reopened while finalizing; finalize skipped", extra={"job_id": job_id})
            _forget_writes(session, job_id, written_over)
            return None
        if _claims(session, job_id) != manifests.claims:
            raise _ClaimedAgain  # rerun since step 1: what was written may be stale, even over fresher ones
        _forget_writes(session, job_id, written_over)
        if job.status.is_terminal:
            if _being_deleted(job):
                raise _Expired(job.status)
            return job.status  # finished by another finalize from the same rows: the same bytes
        target = final_status(job)
        if target is not JobStatus.CANCELLED and job.status is JobStatus.QUEUED:
            mark_job_running(session, job_id)
        error = (
            f"{job.images_failed} of {job.images_total} images failed"
            if target in (JobStatus.FAILED, JobStatus.COMPLETED_WITH_FAILURES)
            else None
        )
        job.manifest_key = manifest_key
        session.flush()
        changed = transition_job(session, job_id, target, error=error)
        session.refresh(job)
        if changed:
            _enqueue_webhook(session, job)
    return target


def finalize_job(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    job_id: str,
    *,
    superseding: Sequence[str] = (),
) -> JobStatus | None:
    """Finalize a job whose chunks are all finished; returns its final status, or None if not ready.

    A job already terminal is returned as is (nothing is written twice), unless this finalize supersedes
    `finalize_writes` rows left by finalizes that died (`superseding`, from the reaper): then the manifests are
    written again from the rows as they are now, and those rows deleted. Raises `FinalizeConflictError` when
    its chunks were claimed again during each of `MAX_FINALIZE_PASSES` passes (its own row stays: the reaper
    asks for another finalize later).
    """
    again = bool(superseding)
    write_id: str | None = None
    for _ in range(MAX_FINALIZE_PASSES):
        manifests = _read_manifests(session_factory, job_id, again=again)
        if not isinstance(manifests, _Manifests):
            # Not ready (a chunk reopened since the last pass: its own finalize writes later), or being
            # deleted: nothing left to write over.
            stale = [write_id] if write_id is not None else []
            if isinstance(manifests, JobStatus):
                stale += superseding
            if stale:
                with transaction(session_factory) as session:
                    _forget_writes(session, job_id, stale)
            return manifests
        if write_id is None:
            write_id = _record_write(session_factory, job_id)  # before the first write, after the read
        try:
            keys = _write_manifests(store, job_id, manifests)
        finally:
            manifests.close()
        try:
            outcome = _finish(session_factory, job_id, manifests, keys[0], [write_id, *superseding])
        except _ClaimedAgain:
            logger.info(
                "chunks claimed again while finalizing: manifests written again", extra={"job_id": job_id}
            )
            again = True
            continue
        except (NotFoundError, _Expired) as exc:
            # Deleted, or being deleted, while the manifests were written (it had been finished by another
            # finalize): what was written after the deletion listed the job's objects would stay for good.
            for key in keys:
                store.delete(key)
            if isinstance(exc, NotFoundError):
                raise
            with transaction(session_factory) as session:
                _forget_writes(session, job_id, [write_id, *superseding])
            return exc.status
        if outcome is not None:
            logger.info("job finalized: %s", outcome.value, extra={"job_id": job_id})
        return outcome
    raise FinalizeConflictError(
        f"job {job_id}: its chunks were claimed again during each of {MAX_FINALIZE_PASSES} finalize passes"
    )


def _enqueue_webhook(session: Session, job: Job) -> None:
    if not wants_event(job.webhook_events, f"job.{job.status.value}"):
        return  # the job's client did not subscribe to this event
    url = job.webhook_url
    if url is None:
        tenant = session.get(Tenant, job.tenant_id)
        url = tenant.webhook_url if tenant is not None else None
    if not url:
        return
    session.add(
        WebhookDelivery(
            id=uuid.uuid4().hex,
            tenant_id=job.tenant_id,
            job_id=job.id,
            event=f"job.{job.status.value}",
            url=url,
            payload=job_event_data(job),
        )
    )
