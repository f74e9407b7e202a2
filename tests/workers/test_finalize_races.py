"""Finalize against a retry that lands while it writes the manifests (PostgreSQL: row locks, no global lock).

Finalize reads "no unfinished chunk", writes the manifests, then locks the job and finishes it. A retry of the
job's failed images (POST /v1/jobs/{id}/retry, `catalogan dlq retry`) takes the same lock and may commit in
between: its chunk is pending again, so the job must not be marked finished with a stale manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import retry_failed_images
from db.engine import make_engine, make_session_factory, transaction
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.status import ChunkStatus, JobStatus
from db.storage import ObjectStore
from db.tables import Chunk
from tests.pipeline import job_row, make_model_version, make_tenant, tiny_checkpoint
from workers import finalize
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.generator_cache import GeneratorCache


@pytest.fixture
def pg_sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_a_retry_committed_while_finalize_writes_the_manifests_keeps_the_job_open(
    pg_sessions: sessionmaker[Session], local_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = ThreadPoolExecutor(max_workers=2)

    def context(*, fail: bool) -> ChunkContext:
        return ChunkContext(
            session_factory=pg_sessions,
            store=local_store,
            generators=GeneratorCache(local_store, device="cpu"),
            settings=WorkerSettings(batch_size=16, max_attempts=1, retry_delay_seconds=0, test_faults=fail),
            worker_name="w",
            pool=pool,
            on_job_finished=lambda job_id: finalize.finalize_job(pg_sessions, local_store, job_id),
        )

    tenant_id = make_tenant(pg_sessions)
    model = make_model_version(pg_sessions, checkpoint=tiny_checkpoint(), store=local_store)
    spec = {"model": "tiny", "items": [{"category": "a", "count": 20}], "chunk_size": 10}
    planned = submit_job(
        pg_sessions,
        parse_job_spec({**spec, "options": {"test_fail_chunk_starts": [0]}}),
        tenant_id=tenant_id,
        model_version=model,
        publisher=lambda queue, ids: None,
    )
    job_id, (first, second) = planned.job_id, planned.chunk_ids
    # Given the job's first chunk quarantined while its second has not run (the job is still running)
    assert generate_chunk(context(fail=True), first) is ChunkOutcome.QUARANTINED
    # When the tenant's retry commits while the last chunk's finalize writes the manifests
    written = finalize.write_manifests

    def write_then_retry(session: Session, store: ObjectStore, job: Any) -> str:
        key = written(session, store, job)
        with transaction(pg_sessions) as other:
            retry_failed_images(other, job_id, tenant_id=tenant_id)
        return key

    monkeypatch.setattr(finalize, "write_manifests", write_then_retry)
    assert generate_chunk(context(fail=True), second) is ChunkOutcome.SUCCEEDED
    monkeypatch.setattr(finalize, "write_manifests", written)
    # Then the job is not finished: its retried chunk is pending, and no manifest is recorded
    job = job_row(pg_sessions, job_id)
    with pg_sessions() as session:
        assert session.get_one(Chunk, first).status is ChunkStatus.PENDING
    assert not job.status.is_terminal and job.manifest_key is None, (job.status, job.manifest_key)
    # And once the retried chunk has run, the job succeeds with a manifest of 20 succeeded images
    assert generate_chunk(context(fail=False), first) is ChunkOutcome.SUCCEEDED
    job = job_row(pg_sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED and job.manifest_key is not None
    rows = [json.loads(line) for line in local_store.get(job.manifest_key).splitlines()]
    assert [row["status"] for row in rows] == ["succeeded"] * 20
    pool.shutdown()
