"""A failed attempt ends with its uploads: none of its PUTs may land after the chunk is released or quarantined
(a rerun elsewhere could write other provenance bytes; a deleted job's prefix would keep orphans for good)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.errors import TransientStorageError
from db.job_deletion import delete_job, job_prefix
from db.pipeline_settings import WorkerSettings
from db.planning import PlannedJob, parse_job_spec, submit_job
from db.status import JobStatus
from db.storage import LocalStore
from tests.pipeline import job_row, make_model_version, make_tenant, tiny_checkpoint
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.finalize import finalize_job
from workers.generator_cache import GeneratorCache

SLOW_PUT_SECONDS = 1.5


class FlakyStore(LocalStore):
    """Image 1's PUT fails at once; images 4 to 7 take a while (a store backing off before it succeeds)."""

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        name = key.rsplit("/", 1)[-1]
        if "/jobs/" in key and name == "00000001.png":
            raise TransientStorageError("put: 503 SlowDown")
        if "/jobs/" in key and name.endswith(".png") and name >= "00000004":
            time.sleep(SLOW_PUT_SECONDS)
        super().put(key, data, content_type=content_type)


def _one_chunk_job(
    session_factory: sessionmaker[Session], store: LocalStore, pool: ThreadPoolExecutor, *, max_attempts: int
) -> tuple[ChunkContext, str, PlannedJob]:
    """A worker context on `store` and a job of one 8-image chunk (batches of 4) of a tiny model."""
    ctx = ChunkContext(
        session_factory=session_factory,
        store=store,
        generators=GeneratorCache(store, device="cpu"),
        settings=WorkerSettings(batch_size=4, max_attempts=max_attempts, retry_delay_seconds=0),
        worker_name="w",
        pool=pool,
        on_job_finished=lambda job_id: finalize_job(session_factory, store, job_id),
    )
    tenant = make_tenant(session_factory)
    model = make_model_version(session_factory, checkpoint=tiny_checkpoint(), store=store)
    spec: dict[str, Any] = {"model": "tiny", "items": [{"category": "a", "count": 8}], "chunk_size": 8}
    planned = submit_job(
        session_factory,
        parse_job_spec(spec),
        tenant_id=tenant,
        model_version=model,
        publisher=lambda q, i: None,
    )
    return ctx, tenant, planned


def test_a_failed_attempts_running_uploads_end_before_it_does(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    store = FlakyStore(tmp_path / "objects")
    pool = ThreadPoolExecutor(max_workers=4)
    ctx, tenant, planned = _one_chunk_job(session_factory, store, pool, max_attempts=1)
    # Given an attempt whose first batch's upload fails while its second batch's uploads are still running
    assert generate_chunk(ctx, planned.chunk_ids[0]) is ChunkOutcome.QUARANTINED
    assert job_row(session_factory, planned.job_id).status is JobStatus.FAILED
    # When the failed job is deleted right after the attempt ended
    delete_job(session_factory, store, planned.job_id, tenant_id=tenant)
    time.sleep(SLOW_PUT_SECONDS + 1.0)
    # Then no upload of that attempt landed afterwards under the deleted job's prefix
    assert [info.key for info in store.list(job_prefix(tenant, planned.job_id))] == []
    pool.shutdown()


def test_graceful_shutdowns_give_their_claims_back_so_rolling_restarts_do_not_quarantine(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    from db.tables import Chunk

    store = LocalStore(tmp_path / "objects")
    pool = ThreadPoolExecutor(max_workers=2)
    ctx, _tenant, planned = _one_chunk_job(session_factory, store, pool, max_attempts=3)
    chunk_id = planned.chunk_ids[0]
    # Given a budget of 3 claims, when the chunk's worker is stopped gracefully (SIGTERM) 4 times while it runs
    ctx.shutdown.set()
    assert [generate_chunk(ctx, chunk_id) for _ in range(4)] == [ChunkOutcome.RELEASED] * 4
    ctx.shutdown.clear()
    # Then the chunk is still pending with its budget whole, and the next worker finishes the job
    with session_factory() as session:
        chunk = session.get_one(Chunk, chunk_id)
        assert (chunk.status.value, chunk.attempt - chunk.retry_base) == ("pending", 0)
    assert generate_chunk(ctx, chunk_id) is ChunkOutcome.SUCCEEDED
    assert job_row(session_factory, planned.job_id).status is JobStatus.SUCCEEDED
    pool.shutdown()
