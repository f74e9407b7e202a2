"""Generating chunks in-process (the plain function behind the Celery task), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.chunks import claim_chunk
from db.engine import transaction
from db.jobs import request_cancel
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.status import ChunkStatus, ImageStatus, JobStatus
from db.storage import ObjectStore
from db.tables import Chunk, Image, Job, WebhookDelivery
from scheduler.api.openapi_extras import JobEventData
from scheduler.webhooks import event_envelope
from tests.clock_skew import skew_host_clock
from tests.pipeline import job_row, make_model_version, make_tenant, tiny_checkpoint
from workers import chunk_generation
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.encoding import IPTC_TRAINED_ALGORITHMIC_MEDIA
from workers.finalize import finalize_job
from workers.generator_cache import GeneratorCache


class Recorder:
    """Publisher stand-in that records chunk ids (these tests call the worker function directly)."""

    def __init__(self) -> None:
        self.published: list[int] = []

    def __call__(self, queue: str, chunk_ids: Sequence[int]) -> None:
        self.published.extend(chunk_ids)


@pytest.fixture
def context(session_factory: sessionmaker[Session], local_store: ObjectStore) -> Iterator[ChunkContext]:
    """A worker context on `db_url` and a local object folder, with a small batch size."""
    pool = ThreadPoolExecutor(max_workers=4)
    settings = WorkerSettings(batch_size=16, upload_threads=4, max_attempts=3, retry_delay_seconds=0)
    ctx = ChunkContext(
        session_factory=session_factory,
        store=local_store,
        generators=GeneratorCache(local_store, device="cpu"),
        settings=settings,
        worker_name="test-worker",
        pool=pool,
        on_job_finished=lambda job_id: finalize_job(session_factory, local_store, job_id),
    )
    yield ctx
    pool.shutdown(wait=True)


def envelope_type(delivery: WebhookDelivery) -> str:
    """The `type` a receiver sees for an outbox row."""
    return str(event_envelope(delivery.event, delivery.created_at, delivery.payload)["type"])


def _submit(ctx: ChunkContext, spec: dict[str, object]) -> tuple[str, tuple[int, ...]]:
    tenant_id = make_tenant(ctx.session_factory)
    model_version = make_model_version(ctx.session_factory, checkpoint=tiny_checkpoint(), store=ctx.store)
    planned = submit_job(
        ctx.session_factory,
        parse_job_spec(spec),
        tenant_id=tenant_id,
        model_version=model_version,
        publisher=Recorder(),
    )
    return planned.job_id, planned.chunk_ids


def _snapshot(ctx: ChunkContext, job_id: str) -> dict[int, tuple[object, ...]]:
    with ctx.session_factory() as session:
        images = session.scalars(select(Image).where(Image.job_id == job_id)).all()
        return {
            image.index: (
                image.key,
                image.sha256,
                image.size_bytes,
                image.status,
                image.attempt,
                image.created_at,
                ctx.store.get(image.key) if image.key else None,
            )
            for image in images
        }


def test_a_job_run_chunk_by_chunk_succeeds_with_provenance_and_a_manifest(context: ChunkContext) -> None:
    # Given a 50-image job over two items (one with a SKU), in chunks of 20
    job_id, chunk_ids = _submit(
        context,
        {
            "model": "tiny",
            "items": [{"category": "a", "count": 30}, {"category": "b", "count": 20, "sku": "SKU-9"}],
            "chunk_size": 20,
            "seed": 42,
        },
    )
    # When every chunk runs
    outcomes = [generate_chunk(context, chunk_id) for chunk_id in chunk_ids]
    # Then the job succeeded with one row per image whose sha256 matches the stored bytes
    assert outcomes == [ChunkOutcome.SUCCEEDED] * 3
    job = job_row(context.session_factory, job_id)
    assert (job.status, job.images_done, job.images_failed, job.chunks_finished) == (
        JobStatus.SUCCEEDED,
        50,
        0,
        3,
    )
    snapshot = _snapshot(context, job_id)
    assert sorted(snapshot) == list(range(50))
    for index, (key, sha, size, status, *_rest, data) in snapshot.items():
        assert status is ImageStatus.SUCCEEDED and isinstance(data, bytes)
        assert hashlib.sha256(data).hexdigest() == sha and len(data) == size
        folder = "a" if index < 30 else "SKU-9"
        assert key == f"{job.tenant_id}/jobs/{job_id}/{folder}/{index:08d}.png"
    # And each PNG carries its provenance and the IPTC marker
    png = PILImage.open(io.BytesIO(snapshot[31][-1]))  # type: ignore[arg-type]
    assert png.size == (8, 8)
    text: dict[str, str] = png.text  # type: ignore[attr-defined]
    assert text["catalogan:job_id"] == job_id and text["catalogan:index"] == "31"
    assert text["catalogan:seed"] == "42" and text["catalogan:sku"] == "SKU-9"
    assert text["catalogan:ai_generated"] == "AI-generated"
    assert IPTC_TRAINED_ALGORITHMIC_MEDIA in text["XML:com.adobe.xmp"]
    # And the manifest lists every image
    lines = context.store.get(f"{job.tenant_id}/jobs/{job_id}/manifest.jsonl").decode().splitlines()
    manifest = [json.loads(line) for line in lines]
    assert [row["index"] for row in manifest] == list(range(50))
    assert manifest[31]["sha256"] == snapshot[31][1] and manifest[31]["model_version"] == "tiny@1"
    assert job.manifest_key == f"{job.tenant_id}/jobs/{job_id}/manifest.jsonl"
    table = pq.read_table(io.BytesIO(context.store.get(f"{job.tenant_id}/jobs/{job_id}/manifest.parquet")))
    assert table.column_names == [
        "index",
        "sku",
        "category",
        "key",
        "sha256",
        "seed",
        "model_version",
        "status",
        "error",
        "score",
        "redraws",
    ]
    assert table.to_pylist() == manifest  # the same records as the JSONL


def test_rerunning_a_finished_chunk_changes_no_byte_and_no_row(context: ChunkContext) -> None:
    # Given a finished job
    job_id, chunk_ids = _submit(
        context, {"model": "tiny", "items": [{"category": "c", "count": 24}], "chunk_size": 12}
    )
    for chunk_id in chunk_ids:
        generate_chunk(context, chunk_id)
    before = _snapshot(context, job_id)
    # When a chunk's message is delivered again
    outcome = generate_chunk(context, chunk_ids[0])
    # Then nothing is claimed and every byte and row is unchanged
    assert outcome is ChunkOutcome.NOT_CLAIMED
    assert _snapshot(context, job_id) == before


def test_a_chunk_interrupted_midway_reruns_to_identical_bytes(context: ChunkContext) -> None:
    # Given a chunk whose first attempt wrote some images and then died (its lease expired)
    job_id, chunk_ids = _submit(
        context, {"model": "tiny", "items": [{"category": "a", "count": 40}], "chunk_size": 40}
    )
    generate_chunk(context, chunk_ids[0])
    first = _snapshot(context, job_id)
    with transaction(context.session_factory) as session:  # rewind: as if the worker died after writing
        session.execute(update(Chunk).values(status=ChunkStatus.LEASED, lease_expires_at=None))
        session.execute(update(Job).values(status=JobStatus.RUNNING, images_done=0, chunks_finished=0))
        session.execute(update(Chunk).values(lease_expires_at=Chunk.finished_at))
    # When the chunk runs again
    assert generate_chunk(context, chunk_ids[0]) is ChunkOutcome.SUCCEEDED
    # Then the same keys hold the same bytes, and there is still one row per image
    second = _snapshot(context, job_id)
    assert sorted(second) == list(range(40))
    assert {i: (v[0], v[1], v[-1]) for i, v in second.items()} == {
        i: (v[0], v[1], v[-1]) for i, v in first.items()
    }
    assert job_row(context.session_factory, job_id).images_done == 40


def test_a_stale_attempt_cannot_write(context: ChunkContext) -> None:
    # Given a chunk claimed by another worker after this one's lease was lost
    job_id, chunk_ids = _submit(
        context, {"model": "tiny", "items": [{"category": "a", "count": 8}], "chunk_size": 8}
    )
    with transaction(context.session_factory) as session:
        claim_chunk(session, chunk_ids[0], worker="other", lease_seconds=600)
    # When this worker gets the message, then it cannot claim it and writes nothing
    assert generate_chunk(context, chunk_ids[0]) is ChunkOutcome.NOT_CLAIMED
    assert _snapshot(context, job_id) == {}


def test_a_slow_model_load_renews_the_lease_before_the_first_batch(
    context: ChunkContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a chunk whose model takes longer to load than the interval between lease renewals
    job_id, chunk_ids = _submit(
        context, {"model": "tiny", "items": [{"category": "a", "count": 8}], "chunk_size": 8}
    )
    events: list[str] = []
    load = context.generators.get

    def slow_load(*args: object, **kwargs: object) -> object:
        time.sleep(chunk_generation.SHARD_CHECK_SECONDS + 0.2)
        events.append("loaded")
        return load(*args, **kwargs)  # type: ignore[arg-type]

    renew, forward = chunk_generation.renew_lease, chunk_generation._forward
    monkeypatch.setattr(context.generators, "get", slow_load)
    monkeypatch.setattr(
        chunk_generation, "renew_lease", lambda *a, **k: events.append("renewed") or renew(*a, **k)
    )
    monkeypatch.setattr(chunk_generation, "_forward", lambda *a: events.append("forward") or forward(*a))
    # When it runs
    assert generate_chunk(context, chunk_ids[0]) is ChunkOutcome.SUCCEEDED
    # Then the lease the claim took was renewed after the load and before the first forward pass (the
    # interval counts from the claim, not from the first batch), so no reaper could hand the chunk on
    assert events[:3] == ["loaded", "renewed", "forward"]
    assert job_row(context.session_factory, job_id).images_done == 8


def test_cancel_before_a_chunk_runs_cancels_it_and_the_job(context: ChunkContext) -> None:
    # Given a job with two chunks, the first finished, and a cancel request
    job_id, chunk_ids = _submit(
        context, {"model": "tiny", "items": [{"category": "b", "count": 20}], "chunk_size": 10}
    )
    generate_chunk(context, chunk_ids[0])
    with transaction(context.session_factory) as session:
        request_cancel(session, job_id)
    # When the second chunk's message arrives
    assert generate_chunk(context, chunk_ids[1]) is ChunkOutcome.CANCELLED
    # Then the finished images stay, no new ones appear, and the job is cancelled
    job = job_row(context.session_factory, job_id)
    assert (job.status, job.images_done, job.chunks_finished) == (JobStatus.CANCELLED, 10, 2)
    assert sorted(_snapshot(context, job_id)) == list(range(10))


def test_an_injected_fault_is_retried_then_quarantined(
    context: ChunkContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given fault injection enabled and a job whose chunk at index 10 always fails
    context.settings = WorkerSettings(batch_size=16, max_attempts=3, retry_delay_seconds=0, test_faults=True)
    republished: list[int] = []
    context.republish = lambda queue, chunk_id, countdown: republished.append(chunk_id)
    job_id, chunk_ids = _submit(
        context,
        {
            "model": "tiny",
            "items": [{"category": "a", "count": 30}],
            "chunk_size": 10,
            "options": {"test_fail_chunk_starts": [10]},
            "webhook_url": "https://hooks.example.com/catalogan",
            "metadata": {"batch": "spring"},
        },
    )
    # When each chunk's messages are delivered until nothing is left
    outcomes = [generate_chunk(context, chunk_ids[0]), generate_chunk(context, chunk_ids[2])]
    outcomes += [generate_chunk(context, chunk_ids[1]) for _ in range(3)]
    # Then the failing chunk was retried twice and quarantined at the third attempt; the others completed
    assert outcomes == [
        ChunkOutcome.SUCCEEDED,
        ChunkOutcome.SUCCEEDED,
        ChunkOutcome.RETRY,
        ChunkOutcome.RETRY,
        ChunkOutcome.QUARANTINED,
    ]
    assert republished == [chunk_ids[1], chunk_ids[1]]
    job = job_row(context.session_factory, job_id)
    assert (job.status, job.images_done, job.images_failed) == (JobStatus.COMPLETED_WITH_FAILURES, 20, 10)
    with context.session_factory() as session:
        failed = session.scalars(select(Image).where(Image.status == ImageStatus.FAILED)).all()
        assert sorted(image.index for image in failed) == list(range(10, 20))
        assert all("injected fault" in (image.error or "") for image in failed)
        # The job completed with failures (others were delivered): so says its one terminal webhook event
        events = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).all()
        assert [event.event for event in events] == ["job.completed_with_failures"]
        assert events[0].payload["images_failed"] == 10 and events[0].payload["images_done"] == 20
        assert envelope_type(events[0]) == "job.completed_with_failures"
        # with every field the API documents for an event's data, as the beat's events carry them
        data = JobEventData.model_validate(events[0].payload)
        assert set(events[0].payload) == set(JobEventData.model_fields) - {"reviews"}
        assert data.metadata == {"batch": "spring"} and data.images_rejected == 0
        assert data.started_at is not None and data.finished_at is not None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # lease times are the database's there
def test_a_worker_whose_clock_runs_an_hour_ahead_leaves_a_live_lease_to_its_holder(
    context: ChunkContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a chunk another worker (with the right time) claimed a moment ago, for 120 s
    job_id, chunk_ids = _submit(
        context, {"model": "tiny", "items": [{"category": "a", "count": 8}], "chunk_size": 8}
    )
    with transaction(context.session_factory) as session:
        assert claim_chunk(session, chunk_ids[0], worker="other", lease_seconds=120) is not None
    # When its message reaches this worker, whose host clock runs an hour ahead
    skew_host_clock(monkeypatch, dt.timedelta(hours=1))
    outcome = generate_chunk(context, chunk_ids[0])
    # Then it does not take the chunk over: nothing claimed, nothing written, the holder keeps attempt 1
    assert outcome is ChunkOutcome.NOT_CLAIMED
    assert _snapshot(context, job_id) == {}
    with context.session_factory() as session:
        chunk = session.get_one(Chunk, chunk_ids[0])
        assert (chunk.status, chunk.attempt, chunk.leased_by) == (ChunkStatus.LEASED, 1, "other")
