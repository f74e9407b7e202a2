"""The reaper repairs the pipeline from SQL: expired leases, lost messages, quarantine, cancel, stragglers."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.chunks import Lease, assert_lease, claim_chunk
from db.engine import transaction
from db.jobs import request_cancel
from db.pipeline_settings import ReaperSettings
from db.planning import parse_job_spec, submit_job
from db.status import ChunkStatus, ImageStatus, JobStatus
from db.storage import ObjectStore
from db.tables import Chunk, FinalizeWrite, Image, Job, utcnow
from scheduler.reaper import Reaper, ReapReport
from tests.clock_skew import skew_host_clock, wait_until_database_passes
from tests.pipeline import PipelineStack, job_row, make_model_version, make_tenant, wait_for
from tests.services import flush_keeping_claim


class FakeBroker:
    """Records published chunk ids and finalize requests; reports a settable queue depth."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, int]] = []
        self.finalized: list[str] = []
        self.rewrites: list[tuple[str, tuple[str, ...]]] = []  # (job id, the finalize_writes it supersedes)
        self.depth = 0

    def publish(self, queue: str, chunk_ids: Sequence[int]) -> None:
        self.chunks.extend((queue, chunk_id) for chunk_id in chunk_ids)

    def publish_finalize(self, queue: str, job_id: str, *, superseding: Sequence[str] = ()) -> None:
        if superseding:
            self.rewrites.append((job_id, tuple(superseding)))
        else:
            self.finalized.append(job_id)


@pytest.fixture
def broker() -> FakeBroker:
    """A recording stand-in for the broker (the real one is exercised by the Redis test below)."""
    return FakeBroker()


@pytest.fixture
def reaper(session_factory: sessionmaker[Session], broker: FakeBroker) -> Reaper:
    """A reaper with 3 attempts, a 60 s lost-message threshold and a 30 s finalize grace."""
    settings = ReaperSettings(max_attempts=3, republish_after_seconds=60, finalize_grace_seconds=30)
    return Reaper(
        session_factory,
        publisher=broker.publish,
        publish_finalize=broker.publish_finalize,
        queue_depth=lambda queue: broker.depth,
        settings=settings,
    )


def _job(
    session_factory: sessionmaker[Session], count: int = 20, chunk_size: int = 10
) -> tuple[str, tuple[int, ...]]:
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    planned = submit_job(
        session_factory,
        parse_job_spec({"items": [{"category": "a", "count": count}], "chunk_size": chunk_size, "seed": 1}),
        tenant_id=tenant_id,
        model_version=model_version,
        publisher=lambda queue, ids: None,
    )
    return planned.job_id, planned.chunk_ids


def _claim(session_factory: sessionmaker[Session], chunk_id: int, now: dt.datetime) -> Lease:
    with transaction(session_factory) as session:
        lease = claim_chunk(session, chunk_id, worker="w", lease_seconds=5, max_attempts=10, now=now)
    assert lease is not None
    return lease


def _chunk(session_factory: sessionmaker[Session], chunk_id: int) -> Chunk:
    with session_factory() as session:
        chunk = session.get(Chunk, chunk_id)
        assert chunk is not None
        return chunk


def test_an_expired_lease_is_released_and_republished(
    session_factory: sessionmaker[Session], reaper: Reaper, broker: FakeBroker
) -> None:
    # Given a chunk whose worker died: its lease expired a minute ago
    _job_id, chunk_ids = _job(session_factory)
    _claim(session_factory, chunk_ids[0], utcnow() - dt.timedelta(seconds=60))
    # When the reaper runs
    report = reaper.reap_once()
    # Then the chunk is pending again and its message was published once
    assert report.requeued == [chunk_ids[0]] and broker.chunks == [("bulk", chunk_ids[0])]
    chunk = _chunk(session_factory, chunk_ids[0])
    assert chunk.status is ChunkStatus.PENDING and "lease expired" in str(chunk.last_error)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # row locks: PostgreSQL only
def test_a_chunk_locked_by_a_frozen_worker_does_not_stall_the_reaper(
    session_factory: sessionmaker[Session], reaper: Reaper, broker: FakeBroker
) -> None:
    # Given two expired leases, one of them row-locked by a worker frozen inside its write transaction
    past = utcnow() - dt.timedelta(seconds=60)
    _job_id, (locked, free) = _job(session_factory, count=20, chunk_size=10)
    lease = _claim(session_factory, locked, past)
    _claim(session_factory, free, past)
    frozen = session_factory()
    assert_lease(frozen, lease)  # the worker's fenced write, which takes the chunk's row lock
    try:
        # When the reaper runs
        reports: list[ReapReport] = []
        runner = threading.Thread(target=lambda: reports.append(reaper.reap_once()), daemon=True)
        runner.start()
        runner.join(timeout=30)
        # Then it finished without waiting on the lock: the free chunk is requeued, the locked one left alone
        assert not runner.is_alive(), "the reaper is waiting on the frozen worker's row lock"
        assert reports[0].requeued == [free] and broker.chunks == [("bulk", free)]
        assert _chunk(session_factory, locked).status is ChunkStatus.LEASED
    finally:
        frozen.rollback()
        frozen.close()
    # And once the frozen transaction ends, the next pass requeues the other chunk too
    assert reaper.reap_once().requeued == [locked]


def test_a_chunk_out_of_attempts_is_quarantined_and_the_job_finalized(
    session_factory: sessionmaker[Session], reaper: Reaper, broker: FakeBroker
) -> None:
    # Given a 2-chunk job: chunk 0 done, chunk 1's third attempt died
    job_id, chunk_ids = _job(session_factory)
    with transaction(session_factory) as session:
        session.execute(
            update(Chunk).where(Chunk.id == chunk_ids[0]).values(status=ChunkStatus.SUCCEEDED, images_done=10)
        )
        session.execute(update(Job).values(chunks_finished=1, images_done=10, status=JobStatus.RUNNING))
        session.execute(update(Chunk).where(Chunk.id == chunk_ids[1]).values(attempt=2))
    _claim(session_factory, chunk_ids[1], utcnow() - dt.timedelta(seconds=60))
    # When the reaper runs
    report = reaper.reap_once()
    # Then the chunk is quarantined with failed image rows, counters are exact and a finalize is published at once
    assert report.quarantined == [chunk_ids[1]] and broker.finalized == [job_id] and broker.chunks == []
    assert _chunk(session_factory, chunk_ids[1]).status is ChunkStatus.QUARANTINED
    job = job_row(session_factory, job_id)
    assert (job.chunks_finished, job.images_done, job.images_failed) == (2, 10, 10)
    with session_factory() as session:
        failed = session.scalars(select(Image).where(Image.job_id == job_id)).all()
        assert sorted(image.index for image in failed) == list(range(10, 20))
        assert all(
            image.status is ImageStatus.FAILED and "gave up after 3" in str(image.error) for image in failed
        )


def test_lost_messages_are_republished_only_when_the_queue_is_empty(
    session_factory: sessionmaker[Session], reaper: Reaper, broker: FakeBroker
) -> None:
    # Given a job whose chunks were published two minutes ago and are still pending
    _job_id, chunk_ids = _job(session_factory)
    with transaction(session_factory) as session:
        session.execute(update(Chunk).values(enqueued_at=utcnow() - dt.timedelta(seconds=120)))
    # When the queue still holds messages, then nothing is republished (they are waiting their turn)
    broker.depth = 5
    assert reaper.reap_once().republished == []
    # When the queue is empty (Redis restarted empty), then each stale chunk is republished once
    broker.depth = 0
    assert reaper.reap_once().republished == list(chunk_ids)
    assert reaper.reap_once().republished == []  # enqueued_at was refreshed: no flood
    assert broker.chunks == [("bulk", chunk_id) for chunk_id in chunk_ids]


def test_a_cancelled_job_is_finished_without_a_worker(
    session_factory: sessionmaker[Session], reaper: Reaper, broker: FakeBroker
) -> None:
    # Given a queued job with pending chunks, then cancelled
    job_id, chunk_ids = _job(session_factory, count=30)
    with transaction(session_factory) as session:
        request_cancel(session, job_id)
    # When the reaper runs, then every pending chunk is cancelled and a finalize is published
    report = reaper.reap_once()
    assert sorted(report.cancelled) == sorted(chunk_ids) and broker.finalized == [job_id]
    assert job_row(session_factory, job_id).chunks_finished == 3


def test_a_straggler_gets_a_finalize_after_the_grace_period(
    session_factory: sessionmaker[Session], reaper: Reaper, broker: FakeBroker
) -> None:
    # Given a job whose chunks all finished but whose finalize never ran (crash after the last commit)
    job_id, _ = _job(session_factory)
    with transaction(session_factory) as session:
        session.execute(update(Chunk).values(status=ChunkStatus.SUCCEEDED))
        session.execute(update(Job).values(chunks_finished=2, images_done=20, status=JobStatus.RUNNING))
    now = utcnow()
    # When the reaper sees it first, then it waits for the grace period (the worker may be finalizing)
    assert reaper.reap_once(now).finalize_published == []
    # And after the grace period it publishes one finalize
    assert reaper.reap_once(now + dt.timedelta(seconds=31)).finalize_published == [job_id]
    assert reaper.reap_once(now + dt.timedelta(seconds=32)).finalize_published == []


def test_a_dead_finalizes_write_is_superseded_after_the_write_timeout_once_per_timeout(
    session_factory: sessionmaker[Session], broker: FakeBroker
) -> None:
    # Given a job with two finalize_writes rows left behind (finalizes that died while writing)
    job_id, _ = _job(session_factory)
    with transaction(session_factory) as session:
        session.add_all([FinalizeWrite(id="w1", job_id=job_id), FinalizeWrite(id="w2", job_id=job_id)])
    reaper = Reaper(
        session_factory,
        publisher=broker.publish,
        publish_finalize=broker.publish_finalize,
        queue_depth=lambda queue: 0,
        settings=ReaperSettings(finalize_grace_seconds=3600, finalize_write_timeout_seconds=900),
    )
    now = utcnow()
    # When the reaper first sees them, then it waits: a finalize writing a large manifest is still alive
    assert reaper.reap_once(now).finalize_rewrites == []
    assert reaper.reap_once(now + dt.timedelta(seconds=899)).finalize_rewrites == []
    # And after the timeout it publishes one finalize superseding both, then none until the next timeout
    assert reaper.reap_once(now + dt.timedelta(seconds=900)).finalize_rewrites == [job_id]
    assert [(job, sorted(ids)) for job, ids in broker.rewrites] == [(job_id, ["w1", "w2"])]
    assert reaper.reap_once(now + dt.timedelta(seconds=1000)).finalize_rewrites == []
    assert reaper.reap_once(now + dt.timedelta(seconds=1800)).finalize_rewrites == [job_id]
    assert broker.finalized == []


def test_the_reaper_and_beat_command_import_no_torch() -> None:
    # Given a fresh interpreter, when the reaper, the beat command and planning are imported
    code = (
        "import sys, scheduler.reaper, scheduler.periodic, scheduler.cli.beat_commands, db.planning, db.messaging;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('workers', 'models'))]; print(bad)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # Then neither torch nor the workers or models packages were loaded
    assert output.strip() == "[]"


@pytest.fixture
def stack(
    pg_url: str, redis_url: str, s3_store: ObjectStore, s3_env: dict[str, str], tmp_path: Path
) -> Iterator[PipelineStack]:
    """PostgreSQL + Redis + SeaweedFS with a tiny model registered; processes are stopped afterwards."""
    pipeline = PipelineStack(
        db_url=pg_url, redis_url=redis_url, store=s3_store, s3_env=s3_env, folder=tmp_path
    )
    yield pipeline
    pipeline.close()


@pytest.mark.integration
@pytest.mark.slow
def test_redis_flushed_mid_job_the_reaper_requeues_from_sql(stack: PipelineStack) -> None:
    import redis

    # Given a job in progress on a worker, with `catalogan beat` running
    stack.start("worker")
    stack.start("beat")
    job_id = stack.submit({"items": [{"category": "c", "count": 1500}], "chunk_size": 100, "seed": 4})
    wait_for(lambda: stack.job(job_id).images_done >= 100, timeout=120, what="a finished chunk")
    # When Redis loses every queued message (FLUSHDB, keeping this test's claim on the database)
    client = redis.Redis.from_url(stack.redis_url)
    flush_keeping_claim(client)
    assert client.llen("bulk") == 0
    client.close()
    # Then the reaper re-enqueues the pending chunks from SQL and the job completes, exactly
    job = stack.wait_terminal(job_id)
    assert (job.status, job.images_done, job.images_failed) == (JobStatus.SUCCEEDED, 1500, 0)
    assert len(stack.image_keys(job_id)) == 1500
    with stack.session_factory() as session:
        assert len(session.scalars(select(Image.index).where(Image.job_id == job_id)).all()) == 1500


def test_a_failing_step_does_not_keep_the_others_from_running(
    session_factory: sessionmaker[Session], broker: FakeBroker
) -> None:
    """With the broker down, measuring queue depths (lost messages) fails; a cancelled job's chunks must still
    be cancelled in the same pass (that step needs no broker), and the pass still reports the failure."""

    def broker_down(queue: str) -> int:
        raise ConnectionError("redis: connection refused")

    reaper = Reaper(
        session_factory,
        publisher=broker.publish,
        publish_finalize=broker.publish_finalize,
        queue_depth=broker_down,
        settings=ReaperSettings(max_attempts=3, republish_after_seconds=60, finalize_grace_seconds=30),
    )
    # Given a cancelled job (the lost-message step asks the broker for its queue depths first, and fails)
    job_id, chunk_ids = _job(session_factory, count=30)
    with transaction(session_factory) as session:
        session.execute(update(Chunk).values(enqueued_at=utcnow() - dt.timedelta(hours=1)))
        request_cancel(session, job_id)
    with pytest.raises(ConnectionError, match="connection refused"):
        reaper.reap_once()
    with session_factory() as session:
        statuses = session.scalars(select(Chunk.status).where(Chunk.id.in_(chunk_ids))).all()
    assert set(statuses) == {ChunkStatus.CANCELLED}
    assert job_row(session_factory, job_id).chunks_finished == 3


# --- a reaper whose host clock disagrees (PostgreSQL: lease times are the database server's) -------------

HOUR = dt.timedelta(hours=1)


def _claim_for(session_factory: sessionmaker[Session], chunk_id: int, seconds: float) -> Lease:
    # A worker with the right time takes a lease of `seconds` on the database's clock.
    with transaction(session_factory) as session:
        lease = claim_chunk(session, chunk_id, worker="w", lease_seconds=seconds, max_attempts=10)
    assert lease is not None
    return lease


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_reaper_whose_clock_runs_an_hour_ahead_leaves_a_live_lease_alone(
    session_factory: sessionmaker[Session],
    reaper: Reaper,
    broker: FakeBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker holding a fresh 120 s lease
    _job_id, chunk_ids = _job(session_factory)
    _claim_for(session_factory, chunk_ids[0], 120)
    # When the reaper runs on a host whose clock runs an hour ahead
    assert "scheduler.reaper" in skew_host_clock(monkeypatch, HOUR)
    report = reaper.reap_once()
    # Then the lease is neither released nor republished: the worker keeps its chunk
    assert report.requeued == [] and report.quarantined == [] and broker.chunks == []
    chunk = _chunk(session_factory, chunk_ids[0])
    assert (chunk.status, chunk.attempt, chunk.leased_by) == (ChunkStatus.LEASED, 1, "w")


@pytest.mark.parametrize("offset", [-HOUR, HOUR], ids=["behind", "ahead"])
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_reaper_whose_clock_is_off_still_reclaims_a_lease_that_ran_out(
    session_factory: sessionmaker[Session],
    reaper: Reaper,
    broker: FakeBroker,
    monkeypatch: pytest.MonkeyPatch,
    offset: dt.timedelta,
) -> None:
    # Given a worker that died holding a 1 s lease, which has run out on the database's clock
    _job_id, chunk_ids = _job(session_factory)
    lease = _claim_for(session_factory, chunk_ids[0], 1)
    wait_until_database_passes(session_factory, lease.expires_at)
    # When the reaper runs on a host whose clock is an hour off
    skew_host_clock(monkeypatch, offset)
    report = reaper.reap_once()
    # Then the chunk is released and republished once
    assert report.requeued == [chunk_ids[0]] and broker.chunks == [("bulk", chunk_ids[0])]
    assert _chunk(session_factory, chunk_ids[0]).status is ChunkStatus.PENDING


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_reaper_whose_clock_runs_an_hour_ahead_does_not_republish_fresh_messages(
    session_factory: sessionmaker[Session],
    reaper: Reaper,
    broker: FakeBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given chunks the reaper republished a moment ago (their messages are in a worker's hands: depth 0)
    _job_id, chunk_ids = _job(session_factory)
    with transaction(session_factory) as session:
        session.execute(update(Chunk).values(enqueued_at=utcnow() - dt.timedelta(seconds=120)))
    assert reaper.reap_once().republished == list(chunk_ids)
    # When the reaper runs again on a host whose clock has jumped an hour ahead
    skew_host_clock(monkeypatch, HOUR)
    report = reaper.reap_once()
    # Then nothing is republished: `enqueued_at` and the threshold are on one clock, the database's
    assert report.republished == []
    assert broker.chunks == [("bulk", chunk_id) for chunk_id in chunk_ids]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_job_submitted_on_an_api_host_whose_clock_runs_behind_is_not_republished_at_once(
    session_factory: sessionmaker[Session],
    reaper: Reaper,
    broker: FakeBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a job submitted (and published) by an API host whose clock runs an hour behind the database's
    with monkeypatch.context() as api_host:
        skew_host_clock(api_host, -HOUR)
        _job(session_factory)
    # When the reaper (60 s lost-message threshold) runs a moment later on a host with the right time
    report = reaper.reap_once()
    # Then the fresh messages are not taken for lost ones: the submit's publish time is the database's too
    assert report.republished == [] and broker.chunks == []


@pytest.mark.integration
@pytest.mark.slow
def test_manifests_left_by_a_dead_finalize_are_written_again_through_beat_and_a_worker(
    stack: PipelineStack,
) -> None:
    """Given a finished job whose manifest was then overwritten with stale bytes by a finalize that died before
    its check (its finalize_writes row left behind), when `catalogan beat` (write timeout 0) and a worker run,
    then the reaper's `finalize_job` task, through Redis, writes the manifest again from the image rows and
    deletes the row; the job stays succeeded with its 30 images."""
    stack.start("worker")
    job_id = stack.submit({"items": [{"category": "c", "count": 30}], "chunk_size": 10, "seed": 5})
    job = stack.wait_terminal(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.manifest_key is not None
    fresh = stack.store.get(job.manifest_key)
    stack.store.put(job.manifest_key, b'{"stale": true}\n')
    with transaction(stack.session_factory) as session:
        session.add(FinalizeWrite(id="dead-finalize", job_id=job_id))

    stack.start("beat", CATALOGAN_FINALIZE_WRITE_TIMEOUT_SECONDS="0")

    def rewritten() -> bool:
        with stack.session_factory() as session:
            left = session.scalars(select(FinalizeWrite.id).where(FinalizeWrite.job_id == job_id)).all()
        return not left

    wait_for(rewritten, timeout=120, what="the dead finalize's row deleted by the rewrite")
    assert stack.store.get(job.manifest_key) == fresh
    job = stack.job(job_id)
    assert (job.status, job.images_done) == (JobStatus.SUCCEEDED, 30)
