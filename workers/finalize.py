"""Finishing a job once its last chunk is done: manifests, final status, webhook outbox row.

Idempotent and race-safe: the manifest bytes depend only on the image rows (no timestamps), the status
change is a guarded UPDATE, and only the call that made the change inserts the webhook row. Called inline
by the worker that completed the last chunk, and as the `finalize_job` task the reaper publishes when a
crash came between that commit and this.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.images import iter_image_fields, manifest_keys
from db.incremental import SKIPPED_EXISTING_STATUS, iter_skipped_images
from db.jobs import get_job, mark_job_running, transition_job
from db.status import CHUNK_TERMINAL, JobStatus
from db.storage import ObjectStore
from db.tables import Chunk, Job, ModelVersion, Tenant, WebhookDelivery
from db.webhook_events import wants_event
from workers.shards import SHARD_FORMAT, write_shard_index

logger = logging.getLogger(__name__)

MANIFEST_BATCH_ROWS = 50_000
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


def write_manifests(session: Session, store: ObjectStore, job: Job) -> str:
    """Write `manifest.jsonl` and `manifest.parquet` next to the job's images; returns the JSONL key.

    Rows stream from SQL in batches: the JSONL is built as bytes and the Parquet file one row group per batch,
    so a million-image job never holds a million Python dicts.
    """
    model_version = session.get(ModelVersion, job.model_version_id)
    assert model_version is not None
    model_ref = f"{model_version.name}@{model_version.version}"
    jsonl = io.BytesIO()
    parquet = io.BytesIO()
    batch: list[dict[str, Any]] = []
    with pq.ParquetWriter(parquet, MANIFEST_COLUMNS, compression="zstd") as writer:
        for row in manifest_rows(session, job, model_ref):
            jsonl.write(json.dumps(row, sort_keys=True, separators=(",", ":")).encode() + b"\n")
            batch.append(row)
            if len(batch) >= MANIFEST_BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=MANIFEST_COLUMNS))
                batch = []
        writer.write_table(pa.Table.from_pylist(batch, schema=MANIFEST_COLUMNS))
    jsonl_key, parquet_key = manifest_keys(job.tenant_id, job.id)
    store.put(jsonl_key, jsonl.getvalue(), content_type="application/x-ndjson")
    store.put(parquet_key, parquet.getvalue(), content_type="application/vnd.apache.parquet")
    return jsonl_key


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


def _unfinished_chunks(session: Session, job_id: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Chunk)
            .where(Chunk.job_id == job_id, Chunk.status.not_in(CHUNK_TERMINAL))
        )
        or 0
    )


def webhook_payload(job: Job) -> dict[str, Any]:
    """The body of the `job.<status>` event."""
    return {
        "event": f"job.{job.status.value}",
        "job_id": job.id,
        "status": job.status.value,
        "images_total": int(job.images_total),
        "images_done": int(job.images_done),
        "images_failed": int(job.images_failed),
        "manifest_key": job.manifest_key,
        "error": job.error,
    }


def finalize_job(session_factory: sessionmaker[Session], store: ObjectStore, job_id: str) -> JobStatus | None:
    """Finalize a job whose chunks are all finished; returns its final status, or None if not ready.

    A job already terminal is returned as is (nothing is written twice).
    """
    with session_factory() as session:
        job = get_job(session, job_id)
        if job.status.is_terminal:
            return job.status
        if _unfinished_chunks(session, job_id) > 0:
            logger.info("job not finished yet; finalize skipped", extra={"job_id": job_id})
            return None
        manifest_key = write_manifests(session, store, job)
        if job.output_format == SHARD_FORMAT:
            write_shard_index(session, store, job)
    with transaction(session_factory) as session:
        job = get_job(session, job_id, for_update=True)
        if job.status.is_terminal:
            return job.status
        # Again under the job's lock: a retry (which takes the same lock) may have put a quarantined chunk back
        # to pending while the manifests above were written; that chunk's own finalize comes later.
        if _unfinished_chunks(session, job_id) > 0:
            logger.info("a chunk was reopened while finalizing; finalize skipped", extra={"job_id": job_id})
            return None
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
    logger.info("job finalized: %s", target.value, extra={"job_id": job_id})
    return target


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
            payload=webhook_payload(job),
        )
    )
