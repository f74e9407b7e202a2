"""Chunks that pack several small items (db.chunk_layout), run by the worker function on PostgreSQL: every
image keeps its own item's category, SKU and key, and its bytes are the ones it gets when no item shares a
chunk (the same job id planned one image per chunk, on a second database and store)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import quarantine_chunk
from db.engine import make_engine, make_session_factory, transaction
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.status import ImageStatus, JobStatus
from db.storage import ObjectStore, open_store
from db.tables import Chunk, Image, Job
from tests.pipeline import make_model_version, make_tenant, tiny_checkpoint
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.finalize import finalize_job
from workers.generator_cache import GeneratorCache

JOB_ID = "c0ffee" * 5 + "00"
CATEGORIES = ("a", "b", "c")
# 12 SKU lines of 1-3 images across the three categories: 24 images.
ITEMS: list[dict[str, Any]] = [
    {"category": CATEGORIES[n % 3], "sku": f"SKU-{n:02d}", "count": 1 + n % 3} for n in range(12)
]


def _nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Chunks run in-process here."""


def _context(
    session_factory: sessionmaker[Session], store: ObjectStore, pool: ThreadPoolExecutor
) -> ChunkContext:
    return ChunkContext(
        session_factory=session_factory,
        store=store,
        generators=GeneratorCache(store, device="cpu"),
        settings=WorkerSettings(batch_size=4, upload_threads=2, max_attempts=3, retry_delay_seconds=0),
        worker_name="test-worker",
        pool=pool,
        on_job_finished=lambda job_id: finalize_job(session_factory, store, job_id),
    )


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """The encode + upload pool of both worker contexts."""
    executor = ThreadPoolExecutor(max_workers=2)
    yield executor
    executor.shutdown(wait=True)


def _run_job(ctx: ChunkContext, checkpoint: bytes, spec: dict[str, Any]) -> tuple[str, tuple[int, ...]]:
    """Register tiny@1, submit `spec` as job JOB_ID and run every chunk; (tenant id, chunk ids)."""
    tenant_id = make_tenant(ctx.session_factory)
    model = make_model_version(
        ctx.session_factory, checkpoint=checkpoint, store=ctx.store, categories=CATEGORIES
    )
    planned = submit_job(
        ctx.session_factory,
        parse_job_spec(spec),
        tenant_id=tenant_id,
        model_version=model,
        publisher=_nothing,
        job_id=JOB_ID,
    )
    for chunk_id in planned.chunk_ids:
        assert generate_chunk(ctx, chunk_id) is ChunkOutcome.SUCCEEDED
    return tenant_id, planned.chunk_ids


def _files(ctx: ChunkContext, tenant_id: str) -> dict[int, tuple[Any, ...]]:
    """Per index: category, SKU, status, score, redraws, key without the tenant prefix, and the stored bytes."""
    with ctx.session_factory() as session:
        images = session.scalars(select(Image).where(Image.job_id == JOB_ID)).all()
        return {
            image.index: (
                image.category,
                image.sku,
                image.status,
                image.score,
                image.redraws,
                str(image.key).split(f"{tenant_id}/", 1)[1] if image.key else None,
                ctx.store.get(str(image.key)) if image.key else None,
            )
            for image in images
        }


# The gated run's threshold makes some images redraw and some fail every draw on the tiny model.
@pytest.mark.parametrize("gate", [None, {"min_confidence": 0.036, "max_redraws": 2}], ids=["plain", "gated"])
def test_packed_chunks_keep_each_items_category_sku_key_and_bytes(
    pg_url: str, sqlite_url: str, tmp_path: Path, pool: ThreadPoolExecutor, gate: dict[str, Any] | None
) -> None:
    """Given 12 SKU lines of 1-3 images (24 images), when the job runs with chunks of 8 (small items packed)
    on PostgreSQL and again, as the same job id, with chunks of 1 on SQLite, then the packed job has 4 chunks
    of several items, and every image has its own item's category, SKU and key, with byte-identical files."""
    checkpoint = tiny_checkpoint()
    spec: dict[str, Any] = {"model": "tiny", "items": ITEMS, "seed": 11}
    if gate is not None:
        spec["quality_gate"] = gate
    runs = {}
    for name, url, chunk_size in (("packed", pg_url, 8), ("alone", sqlite_url, 1)):
        engine = make_engine(url)
        try:
            ctx = _context(make_session_factory(engine), open_store((tmp_path / name).as_uri()), pool)
            tenant_id, chunk_ids = _run_job(ctx, checkpoint, {**spec, "chunk_size": chunk_size})
            with ctx.session_factory() as session:
                job = session.get(Job, JOB_ID)
                assert job is not None and job.status is JobStatus.SUCCEEDED
                assert (job.images_done + job.images_rejected, job.chunks_total) == (24, len(chunk_ids))
            runs[name] = (len(chunk_ids), _files(ctx, tenant_id))
        finally:
            engine.dispose()
    (packed_chunks, packed), (alone_chunks, alone) = runs["packed"], runs["alone"]
    assert (packed_chunks, alone_chunks) == (4, 24)  # 12 items in 4 chunks, not 12
    expected: dict[int, tuple[str, str]] = {}
    for item in ITEMS:
        for _ in range(int(item["count"])):
            expected[len(expected)] = (str(item["category"]), str(item["sku"]))
    assert {index: found[:2] for index, found in packed.items()} == expected
    for index, (_, sku, status, _, _, key, _) in packed.items():
        assert status is ImageStatus.REJECTED or key.endswith(f"/{sku}/{index:08d}.png")
    if gate is None:
        assert all(found[2] is ImageStatus.SUCCEEDED for found in packed.values())
    else:  # the gate did work here: some images were redrawn
        assert any(found[4] > 0 for found in packed.values())
    assert packed == alone  # same keys, bytes and gate outcomes, however the images were chunked


def test_a_quarantined_packed_chunk_fails_each_image_under_its_own_item(
    pg_url: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """Given a packed chunk of three SKUs that never ran, when it is quarantined, then each failed image row
    carries its own item's category and SKU (not the chunk's first item's)."""
    engine = make_engine(pg_url)
    try:
        ctx = _context(make_session_factory(engine), open_store((tmp_path / "objects").as_uri()), pool)
        tenant_id = make_tenant(ctx.session_factory)
        model = make_model_version(ctx.session_factory, categories=CATEGORIES)
        planned = submit_job(
            ctx.session_factory,
            parse_job_spec({"items": ITEMS[:3], "chunk_size": 8}),
            tenant_id=tenant_id,
            model_version=model,
            publisher=_nothing,
        )
        assert len(planned.chunk_ids) == 1
        with transaction(ctx.session_factory) as session:
            assert quarantine_chunk(session, planned.chunk_ids[0], error="boom") is not None
        with ctx.session_factory() as session:
            rows = session.execute(
                select(Image.index, Image.category, Image.sku, Image.status)
                .where(Image.job_id == planned.job_id)
                .order_by(Image.index)
            ).all()
            chunk = session.get(Chunk, planned.chunk_ids[0])
            assert chunk is not None and (chunk.start_index, chunk.stop_index) == (0, 6)
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [
        (0, "a", "SKU-00", ImageStatus.FAILED),
        (1, "b", "SKU-01", ImageStatus.FAILED),
        (2, "b", "SKU-01", ImageStatus.FAILED),
        (3, "c", "SKU-02", ImageStatus.FAILED),
        (4, "c", "SKU-02", ImageStatus.FAILED),
        (5, "c", "SKU-02", ImageStatus.FAILED),
    ]
