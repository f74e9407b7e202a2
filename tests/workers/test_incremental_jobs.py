"""Incremental catalog jobs: resubmitting a manifest generates only the items not delivered before."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.incremental import SKIPPED_EXISTING_STATUS
from db.pipeline_settings import WorkerSettings
from db.planning import PlannedJob, parse_job_spec, submit_job
from db.status import ImageStatus, JobStatus
from db.storage import ObjectStore
from db.tables import Image, Job, JobItem, ModelVersion
from tests.pipeline import job_row, make_model_version, make_tenant, tiny_checkpoint
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.finalize import finalize_job
from workers.generator_cache import GeneratorCache

CATEGORIES = ("a", "b", "c")


class Recorder:
    """Publisher stand-in: records chunk ids and finalize requests (chunks run in-process here)."""

    def __init__(self) -> None:
        self.published: list[int] = []
        self.finalize_requests: list[str] = []

    def __call__(self, queue: str, chunk_ids: Sequence[int]) -> None:
        self.published.extend(chunk_ids)

    def publish_finalize(self, queue: str, job_id: str, *, countdown: float | None = None) -> None:
        self.finalize_requests.append(job_id)


@pytest.fixture
def context(session_factory: sessionmaker[Session], local_store: ObjectStore) -> Iterator[ChunkContext]:
    """A worker context on `db_url` (SQLite and PostgreSQL) and a local object folder."""
    pool = ThreadPoolExecutor(max_workers=2)
    ctx = ChunkContext(
        session_factory=session_factory,
        store=local_store,
        generators=GeneratorCache(local_store, device="cpu"),
        settings=WorkerSettings(batch_size=16, upload_threads=2),
        worker_name="test-worker",
        pool=pool,
        on_job_finished=lambda job_id: finalize_job(session_factory, local_store, job_id),
    )
    yield ctx
    pool.shutdown(wait=True)


@pytest.fixture
def tenant_and_model(context: ChunkContext) -> tuple[str, ModelVersion]:
    """A tenant and a registered tiny model version."""
    model = make_model_version(context.session_factory, checkpoint=tiny_checkpoint(), store=context.store)
    return make_tenant(context.session_factory), model


def _catalog(skus: range, **extra: Any) -> dict[str, Any]:
    """A catalog manifest: one image per SKU, client_item_id = SKU, fixed seed."""
    items = [
        {"sku": f"SKU-{n:04d}", "client_item_id": f"SKU-{n:04d}", "category": CATEGORIES[n % 3], "count": 1}
        for n in skus
    ]
    return {"model": "tiny", "items": items, "seed": 7, "chunk_size": 8, **extra}


def _submit(
    ctx: ChunkContext, tenant_and_model: tuple[str, ModelVersion], spec: dict[str, Any], recorder: Recorder
) -> PlannedJob:
    tenant_id, model = tenant_and_model
    return submit_job(
        ctx.session_factory,
        parse_job_spec(spec),
        tenant_id=tenant_id,
        model_version=model,
        publisher=recorder,
    )


def _run(ctx: ChunkContext, planned: PlannedJob) -> None:
    outcomes = [generate_chunk(ctx, chunk_id) for chunk_id in planned.chunk_ids]
    assert outcomes == [ChunkOutcome.SUCCEEDED] * len(planned.chunk_ids)


def _manifest(ctx: ChunkContext, job_id: str) -> list[dict[str, Any]]:
    job = job_row(ctx.session_factory, job_id)
    assert job.manifest_key is not None
    return [json.loads(line) for line in ctx.store.get(job.manifest_key).decode().splitlines()]


def _image_count(ctx: ChunkContext, job_id: str) -> int:
    with ctx.session_factory() as session:
        return int(session.scalar(select(func.count(Image.id)).where(Image.job_id == job_id)) or 0)


def test_resubmitting_a_manifest_with_10_new_skus_among_100_generates_only_the_10(
    context: ChunkContext, tenant_and_model: tuple[str, ModelVersion]
) -> None:
    # Given a catalog of 90 SKUs generated and delivered
    first = _submit(context, tenant_and_model, _catalog(range(90)), Recorder())
    _run(context, first)
    assert job_row(context.session_factory, first.job_id).status is JobStatus.SUCCEEDED
    # When the catalog is resubmitted with 10 new SKUs (100 items, same seed and settings)
    recorder = Recorder()
    second = _submit(context, tenant_and_model, _catalog(range(100)), recorder)
    _run(context, second)
    # Then only the 10 new SKUs are planned and generated
    assert (second.skipped_existing, second.images_total) == (90, 10)
    job = job_row(context.session_factory, second.job_id)
    assert (job.status, job.images_total, job.images_done, job.chunks_total) == (
        JobStatus.SUCCEEDED,
        10,
        10,
        2,  # the 10 one-image items packed 8 to a chunk (db.chunk_layout)
    )
    assert _image_count(context, second.job_id) == 10
    with context.session_factory() as session:
        generated = session.scalars(
            select(JobItem.client_item_id).where(
                JobItem.job_id == second.job_id, JobItem.skipped_existing.is_(False)
            )
        ).all()
    assert sorted(str(item) for item in generated) == [f"SKU-{n:04d}" for n in range(90, 100)]
    # And the manifest lists the 10 new images and the 90 earlier ones as skipped_existing
    manifest = _manifest(context, second.job_id)
    assert [row["sku"] for row in manifest if row["status"] == "succeeded"] == [
        f"SKU-{n:04d}" for n in range(90, 100)
    ]
    skipped = [row for row in manifest if row["status"] == SKIPPED_EXISTING_STATUS]
    assert [row["sku"] for row in skipped] == [f"SKU-{n:04d}" for n in range(90)]
    earlier = {row["sku"]: row for row in _manifest(context, first.job_id)}
    assert all(
        row["key"] == earlier[row["sku"]]["key"] and context.store.exists(row["key"]) for row in skipped
    )
    assert all(row["sha256"] == earlier[row["sku"]]["sha256"] for row in skipped)


def test_a_resubmit_with_other_settings_or_no_client_ids_generates_everything(
    context: ChunkContext, tenant_and_model: tuple[str, ModelVersion]
) -> None:
    # Given 6 SKUs delivered with seed 7 as PNG
    _run(context, _submit(context, tenant_and_model, _catalog(range(6)), Recorder()))
    # When the same SKUs come back with another seed, another format, other options or without client ids
    variants: list[dict[str, Any]] = [
        {**_catalog(range(6)), "seed": 8},
        _catalog(range(6), output_format="webp"),
        _catalog(range(6), options={"note": "retake"}),
        {
            **_catalog(range(6)),
            "items": [{**item, "client_item_id": None} for item in _catalog(range(6))["items"]],
        },
        {**_catalog(range(6)), "seed": None},
    ]
    planned = [_submit(context, tenant_and_model, spec, Recorder()) for spec in variants]
    # Then nothing is skipped: those images were never delivered with these settings
    assert [(job.skipped_existing, job.images_total) for job in planned] == [(0, 6)] * len(variants)


def test_an_item_with_a_failed_image_is_generated_again(
    context: ChunkContext, tenant_and_model: tuple[str, ModelVersion]
) -> None:
    # Given 4 SKUs of 2 images each, where one image of SKU-0001 failed
    spec = {**_catalog(range(4)), "items": [{**item, "count": 2} for item in _catalog(range(4))["items"]]}
    first = _submit(context, tenant_and_model, spec, Recorder())
    _run(context, first)
    with context.session_factory.begin() as session:
        image = session.scalars(select(Image).where(Image.job_id == first.job_id, Image.index == 3)).one()
        image.status = ImageStatus.FAILED
    # When the manifest is resubmitted
    second = _submit(context, tenant_and_model, spec, Recorder())
    # Then only the fully delivered SKUs are skipped
    assert (second.skipped_existing, second.images_total) == (3, 2)


def test_a_resubmit_with_nothing_new_finishes_with_a_manifest_and_no_chunks(
    context: ChunkContext, tenant_and_model: tuple[str, ModelVersion]
) -> None:
    # Given 5 SKUs delivered
    first = _submit(context, tenant_and_model, _catalog(range(5)), Recorder())
    _run(context, first)
    # When the same manifest is submitted again under a new job
    recorder = Recorder()
    second = _submit(context, tenant_and_model, _catalog(range(5)), recorder)
    # Then it has no chunks and asks a worker to finalize it at once
    assert (second.chunk_ids, second.images_total, second.skipped_existing) == ((), 0, 5)
    assert recorder.finalize_requests == [second.job_id] and recorder.published == []
    # And finalizing gives a succeeded job whose manifest lists the 5 delivered images
    assert finalize_job(context.session_factory, context.store, second.job_id) is JobStatus.SUCCEEDED
    manifest = _manifest(context, second.job_id)
    assert [row["status"] for row in manifest] == [SKIPPED_EXISTING_STATUS] * 5


def test_skipped_items_are_listed_with_a_query_per_batch_and_client_ids_are_unique_in_a_job(
    context: ChunkContext, tenant_and_model: tuple[str, ModelVersion]
) -> None:
    from sqlalchemy import event

    from db.errors import PlanningError
    from db.incremental import iter_skipped_images

    # Given 120 SKUs delivered, and a resubmit that skips them all
    _run(context, _submit(context, tenant_and_model, _catalog(range(120)), Recorder()))
    second = _submit(context, tenant_and_model, _catalog(range(120)), Recorder())
    assert second.skipped_existing == 120
    # (not generated, but listed: 120 skipped images cost 2 units of the daily quota, not 0, so resubmitting a
    # delivered catalogue again and again is not free)
    assert job_row(context.session_factory, second.job_id).quota_cost == 2
    # When its skipped images are listed (what the manifest of the job holds)
    statements: list[str] = []
    engine = context.session_factory.kw["bind"]

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        with context.session_factory() as session:
            job = session.get_one(Job, second.job_id)
            listed = [(item.client_item_id, image.sku) for item, image in iter_skipped_images(session, job)]
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # Then every earlier image comes, in item order, from one query for the images, not one per item
    assert listed == [(f"SKU-{n:04d}", f"SKU-{n:04d}") for n in range(120)]
    reads = [statement for statement in statements if re.search(r"\bFROM images\b", statement)]
    assert 1 <= len(reads) <= 2, reads
    # And a job cannot name one client item id twice (one delivered item would stand for any number)
    twice = _catalog(range(2))
    twice["items"][1]["client_item_id"] = twice["items"][0]["client_item_id"]
    with pytest.raises(PlanningError, match=r"items.1.client_item_id 'SKU-0000' repeats items.0's") as caught:
        parse_job_spec(twice)
    assert (caught.value.field, caught.value.rule) == ("items", "unique_client_item_id")
