"""Finalize against what can happen while it writes the manifests to the object store.

Finalize reads "no unfinished chunk" and the image rows, writes the manifests, then locks the job and finishes
it. No SQL transaction (so, on SQLite, no write lock) and no pooled connection is held while the store
writes: on SQLite every transaction takes the write lock, and one held across a slow upload made every other
worker's commit wait on the busy timeout. So, meanwhile:

- a retry of the job's failed images (POST /v1/jobs/{id}/retry, `catalogan dlq retry`) may commit: its chunk is
  pending again, and the job must not be marked finished with a stale manifest;
- the retried chunk may even run and finalize the job first: the stale manifests landing after its fresh ones
  are written again (PostgreSQL: row locks, no global lock; SQLite: the same once the lock is not held).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import retry_failed_images
from db.engine import make_engine, make_session_factory, transaction
from db.images import manifest_keys
from db.job_deletion import expire_job
from db.pipeline_settings import ReaperSettings, WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.status import ChunkStatus, JobStatus
from db.storage import ObjectStore
from db.tables import Chunk, FinalizeWrite, utcnow
from scheduler.reaper import Reaper
from tests.pipeline import job_row, make_model_version, make_tenant, tiny_checkpoint
from workers import finalize
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.generator_cache import GeneratorCache

# How long another connection's write may wait while finalize uploads (SQLite's busy timeout in this test).
OTHER_WRITER_WAIT_SECONDS = 0.5


class HookedStore:
    """An object store that runs `hook` once, in the put of the first manifest, before that put lands."""

    def __init__(self, store: ObjectStore, hook: Callable[[], object]) -> None:
        self.store = store
        self.hook: Callable[[], object] | None = hook

    def put(self, key: str, data: bytes, **options: Any) -> Any:
        self._before(key)
        return self.store.put(key, data, **options)

    def put_file(self, key: str, file: Any, **options: Any) -> Any:
        self._before(key)
        return self.store.put_file(key, file, **options)

    def _before(self, key: str) -> None:
        if self.hook is not None and key.endswith("/manifest.jsonl"):
            hook, self.hook = self.hook, None
            hook()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def pg_sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


Race = tuple[sessionmaker[Session], list[Any], Callable[..., ChunkContext]]


@pytest.fixture(params=["postgresql", "sqlite"])
def race(
    request: pytest.FixtureRequest, pg_url: str, sqlite_url: str, local_store: ObjectStore
) -> Iterator[Race]:
    """(sessions, stores, context) on each database: `context(fail=...)` finalizes through `stores[-1]`."""
    engine = make_engine(pg_url if request.param == "postgresql" else sqlite_url)
    sessions = make_session_factory(engine)
    pool = ThreadPoolExecutor(max_workers=2)
    stores: list[Any] = [local_store]
    yield sessions, stores, _contexts(sessions, local_store, pool, lambda: stores[-1])
    pool.shutdown()
    engine.dispose()


def _contexts(
    sessions: sessionmaker[Session], store: ObjectStore, pool: ThreadPoolExecutor, finalize_store: Any
) -> Callable[..., ChunkContext]:
    def context(*, fail: bool) -> ChunkContext:
        return ChunkContext(
            session_factory=sessions,
            store=store,
            generators=GeneratorCache(store, device="cpu"),
            settings=WorkerSettings(batch_size=16, max_attempts=1, retry_delay_seconds=0, test_faults=fail),
            worker_name="w",
            pool=pool,
            on_job_finished=lambda job_id: finalize.finalize_job(sessions, finalize_store(), job_id),
        )

    return context


def _a_job_with_its_first_chunk_quarantined(
    sessions: sessionmaker[Session], store: ObjectStore, context: Callable[..., ChunkContext]
) -> tuple[str, str, int, int]:
    """(tenant id, job id, first chunk, second chunk): 20 images in two chunks, the first quarantined."""
    tenant_id = make_tenant(sessions)
    model = make_model_version(sessions, checkpoint=tiny_checkpoint(), store=store)
    spec = {"model": "tiny", "items": [{"category": "a", "count": 20}], "chunk_size": 10}
    planned = submit_job(
        sessions,
        parse_job_spec({**spec, "options": {"test_fail_chunk_starts": [0]}}),
        tenant_id=tenant_id,
        model_version=model,
        publisher=lambda queue, ids: None,
    )
    first, second = planned.chunk_ids
    assert generate_chunk(context(fail=True), first) is ChunkOutcome.QUARANTINED
    return tenant_id, planned.job_id, first, second


def _a_job_with_its_chunk_done(
    sessions: sessionmaker[Session], store: ObjectStore, pool: ThreadPoolExecutor, *, finalized: bool
) -> tuple[str, str]:
    """(tenant id, job id): a 10-image job in one chunk, run; finalized by its worker or left to the test."""
    tenant_id = make_tenant(sessions)
    model = make_model_version(sessions, checkpoint=tiny_checkpoint(), store=store)
    spec = parse_job_spec({"model": "tiny", "items": [{"category": "a", "count": 10}], "chunk_size": 10})
    planned = submit_job(
        sessions, spec, tenant_id=tenant_id, model_version=model, publisher=lambda queue, ids: None
    )
    done = _contexts(sessions, store, pool, lambda: store)(fail=False)
    if not finalized:
        done.on_job_finished = lambda job_id: None  # the test finalizes it, in its own way
    assert generate_chunk(done, planned.chunk_ids[0]) is ChunkOutcome.SUCCEEDED
    return tenant_id, planned.job_id


def _paused_upload() -> tuple[Callable[[], None], threading.Event, threading.Event]:
    """(hook, uploading, uploaded): a `HookedStore` hook that says it is uploading, then waits (at most 30 s)
    until the test sets `uploaded`."""
    uploading, uploaded = threading.Event(), threading.Event()

    def hook() -> None:
        uploading.set()
        uploaded.wait(30)

    return hook, uploading, uploaded


def _manifest_statuses(sessions: sessionmaker[Session], store: ObjectStore, job_id: str) -> list[str]:
    job = job_row(sessions, job_id)
    assert job.manifest_key is not None
    return [json.loads(line)["status"] for line in store.get(job.manifest_key).splitlines()]


def test_a_retry_committed_while_finalize_writes_the_manifests_keeps_the_job_open(
    pg_sessions: sessionmaker[Session], local_store: ObjectStore
) -> None:
    pool = ThreadPoolExecutor(max_workers=2)
    stores: list[Any] = [local_store]
    context = _contexts(pg_sessions, local_store, pool, lambda: stores[-1])
    # Given the job's first chunk quarantined while its second has not run (the job is still running)
    tenant_id, job_id, first, second = _a_job_with_its_first_chunk_quarantined(
        pg_sessions, local_store, context
    )

    # When the tenant's retry commits while the last chunk's finalize writes the manifests
    def retry() -> None:
        with transaction(pg_sessions) as other:
            retry_failed_images(other, job_id, tenant_id=tenant_id)

    stores.append(HookedStore(local_store, retry))
    assert generate_chunk(context(fail=True), second) is ChunkOutcome.SUCCEEDED
    stores.append(local_store)
    # Then the job is not finished: its retried chunk is pending, and no manifest is recorded
    job = job_row(pg_sessions, job_id)
    with pg_sessions() as session:
        assert session.get_one(Chunk, first).status is ChunkStatus.PENDING
    assert not job.status.is_terminal and job.manifest_key is None, (job.status, job.manifest_key)
    # And once the retried chunk has run, the job succeeds with a manifest of 20 succeeded images
    assert generate_chunk(context(fail=False), first) is ChunkOutcome.SUCCEEDED
    assert job_row(pg_sessions, job_id).status is JobStatus.SUCCEEDED
    assert _manifest_statuses(pg_sessions, local_store, job_id) == ["succeeded"] * 20
    pool.shutdown()


def test_stale_manifests_landing_after_a_rerun_finished_the_job_are_written_again(
    race: Race, local_store: ObjectStore
) -> None:
    """Given a job whose last chunk's finalize has read the image rows (its first chunk quarantined: 10 failed
    images), when the tenant's retry commits, the retried chunk runs and its own finalize finishes the job
    before the first finalize's manifests land, then the job has succeeded and its manifest lists 20
    succeeded images, not the stale 10 failed ones written last."""
    sessions, stores, context = race
    tenant_id, job_id, first, second = _a_job_with_its_first_chunk_quarantined(sessions, local_store, context)

    def retry_and_rerun() -> None:
        stores.append(local_store)  # the rerun's own finalize writes straight through
        with transaction(sessions) as other:
            retry_failed_images(other, job_id, tenant_id=tenant_id)
        assert generate_chunk(context(fail=False), first) is ChunkOutcome.SUCCEEDED
        assert job_row(sessions, job_id).status is JobStatus.SUCCEEDED

    stores.append(HookedStore(local_store, retry_and_rerun))
    assert generate_chunk(context(fail=True), second) is ChunkOutcome.SUCCEEDED

    assert job_row(sessions, job_id).status is JobStatus.SUCCEEDED
    assert _manifest_statuses(sessions, local_store, job_id) == ["succeeded"] * 20


def test_finalize_holds_no_sqlite_lock_or_pooled_connection_while_the_store_writes(
    sqlite_engine: Engine, sqlite_url: str, local_store: ObjectStore
) -> None:
    """Given an embedded (SQLite) job whose chunks are all done and a store whose manifest upload takes
    seconds, when finalize runs and another process writes meanwhile, then that write commits within
    OTHER_WRITER_WAIT_SECONDS (it waited on the busy timeout before: "database is locked"), finalize holds
    no pooled connection during the upload, and the job still succeeds with its manifest."""
    sessions = make_session_factory(sqlite_engine)
    pool = ThreadPoolExecutor(max_workers=2)
    slow_upload, uploading, uploaded = _paused_upload()
    tenant_id, job_id = _a_job_with_its_chunk_done(sessions, local_store, pool, finalized=False)
    finalizing = threading.Thread(
        target=finalize.finalize_job, args=(sessions, HookedStore(local_store, slow_upload), job_id)
    )
    finalizing.start()
    try:
        assert uploading.wait(60), "finalize never uploaded its manifest"
        checked_out = sqlite_engine.pool.checkedout()  # type: ignore[attr-defined]
        other = sqlite3.connect(sqlite_url.split("///", 1)[1], timeout=OTHER_WRITER_WAIT_SECONDS)
        started = time.monotonic()
        try:
            other.execute("UPDATE tenants SET name = name || '-x' WHERE id = ?", (tenant_id,))
            other.commit()
            waited: float | str = time.monotonic() - started
        except sqlite3.OperationalError as exc:
            waited = f"{exc} after {time.monotonic() - started:.1f} s"
        finally:
            other.close()
    finally:
        uploaded.set()
        finalizing.join(60)
    assert isinstance(waited, float) and waited < OTHER_WRITER_WAIT_SECONDS, waited
    assert checked_out == 0, f"{checked_out} pooled connection(s) held while the store wrote"
    assert job_row(sessions, job_id).status is JobStatus.SUCCEEDED
    assert _manifest_statuses(sessions, local_store, job_id) == ["succeeded"] * 10
    pool.shutdown()


class _Killed(BaseException):
    """The finalizing process dying (kill -9): nothing after the raise runs, no handler catches it."""


def _finalize_writes(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(FinalizeWrite.id).where(FinalizeWrite.job_id == job_id)))


def test_a_finalize_killed_after_writing_stale_manifests_is_written_over_by_the_reaper(
    race: Race, local_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the race above, but the first finalize's process dies right after its stale manifests landed
    (before the check that would have written them again), when the reaper runs with the write timeout
    passed, then it has the manifests written again: 20 succeeded images, no finalize_writes row left, and a
    second reaper pass publishes nothing."""
    sessions, stores, context = race
    tenant_id, job_id, first, second = _a_job_with_its_first_chunk_quarantined(sessions, local_store, context)

    def retry_and_rerun() -> None:
        stores.append(local_store)
        with transaction(sessions) as other:
            retry_failed_images(other, job_id, tenant_id=tenant_id)
        assert generate_chunk(context(fail=False), first) is ChunkOutcome.SUCCEEDED
        assert job_row(sessions, job_id).status is JobStatus.SUCCEEDED
        monkeypatch.setattr(finalize, "_finish", killed)  # the first finalize dies after its writes land

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise _Killed

    finish = finalize._finish
    stores.append(HookedStore(local_store, retry_and_rerun))
    with pytest.raises(_Killed):
        generate_chunk(context(fail=True), second)
    monkeypatch.setattr(finalize, "_finish", finish)
    # The window: the job is finished, and its manifest is the dead finalize's stale one
    assert job_row(sessions, job_id).status is JobStatus.SUCCEEDED
    assert _manifest_statuses(sessions, local_store, job_id) == ["failed"] * 10 + ["succeeded"] * 10
    dead = _finalize_writes(sessions, job_id)
    assert len(dead) == 1

    rewrites: list[tuple[str, tuple[str, ...]]] = []

    def publish_finalize(queue: str, job_id: str, *, superseding: Any = ()) -> None:
        rewrites.append((job_id, tuple(superseding)))  # a worker runs the task
        finalize.finalize_job(sessions, local_store, job_id, superseding=superseding)

    reaper = Reaper(
        sessions,
        publisher=lambda queue, ids: None,
        publish_finalize=publish_finalize,
        queue_depth=lambda queue: 0,
        settings=ReaperSettings(finalize_write_timeout_seconds=0),
    )
    assert reaper.reap_once().finalize_rewrites == [job_id]
    assert rewrites == [(job_id, tuple(dead))]
    assert _manifest_statuses(sessions, local_store, job_id) == ["succeeded"] * 20
    assert _finalize_writes(sessions, job_id) == []
    assert job_row(sessions, job_id).status is JobStatus.SUCCEEDED
    assert reaper.reap_once().empty


def test_a_live_finalize_is_not_superseded_before_the_write_timeout(
    pg_sessions: sessionmaker[Session], local_store: ObjectStore
) -> None:
    """Given a finalize paused in its manifest upload (its finalize_writes row recorded), when the reaper runs
    with the default 900 s timeout, then it publishes nothing; once the upload ends, the row is gone."""
    pool = ThreadPoolExecutor(max_workers=2)
    slow_upload, uploading, uploaded = _paused_upload()
    _, job_id = _a_job_with_its_chunk_done(pg_sessions, local_store, pool, finalized=False)
    published: list[str] = []
    reaper = Reaper(
        pg_sessions,
        publisher=lambda queue, ids: None,
        publish_finalize=lambda queue, job_id, superseding=(): published.append(job_id),
        queue_depth=lambda queue: 0,
        settings=ReaperSettings(finalize_grace_seconds=900),
    )
    finalizing = threading.Thread(
        target=finalize.finalize_job,
        args=(pg_sessions, HookedStore(local_store, slow_upload), job_id),
    )
    finalizing.start()
    try:
        assert uploading.wait(60), "finalize never uploaded its manifest"
        assert len(_finalize_writes(pg_sessions, job_id)) == 1
        report = reaper.reap_once()
    finally:
        uploaded.set()
        finalizing.join(60)
    assert report.finalize_rewrites == [] and published == []
    assert _finalize_writes(pg_sessions, job_id) == []
    assert job_row(pg_sessions, job_id).status is JobStatus.SUCCEEDED
    pool.shutdown()


def test_a_finalize_whose_job_began_expiring_while_it_wrote_deletes_what_it_wrote(
    pg_sessions: sessionmaker[Session], local_store: ObjectStore
) -> None:
    """Given a finished job and a leftover finalize_writes row, when the finalize that supersedes it is writing
    and the job's DELETE begins meanwhile (expires_at now), then what it wrote is deleted again (the
    retention pass may have listed the job's objects already) and both rows are gone."""
    pool = ThreadPoolExecutor(max_workers=2)
    tenant_id, job_id = _a_job_with_its_chunk_done(pg_sessions, local_store, pool, finalized=True)
    assert job_row(pg_sessions, job_id).status is JobStatus.SUCCEEDED
    jsonl_key, parquet_key = manifest_keys(tenant_id, job_id)
    local_store.delete(jsonl_key)
    local_store.delete(parquet_key)  # the retention pass has deleted them already
    with transaction(pg_sessions) as session:
        session.add(FinalizeWrite(id="dead", job_id=job_id))

    def delete_begins() -> None:
        expire_job(pg_sessions, job_id, tenant_id=tenant_id, now=utcnow())

    status = finalize.finalize_job(
        pg_sessions, HookedStore(local_store, delete_begins), job_id, superseding=["dead"]
    )
    assert status is JobStatus.SUCCEEDED
    assert not local_store.exists(jsonl_key) and not local_store.exists(parquet_key)
    assert _finalize_writes(pg_sessions, job_id) == []
    pool.shutdown()
