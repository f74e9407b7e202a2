"""Batch invariance on the shipped generator: an image's bytes never depend on the batch it was computed in.

The worker renders a chunk in batches of `WorkerSettings.batch_size`; the quality gate redraws only the
failing images; `catalogan verify --regenerate` renders one image alone. All of them must produce the same
pixels for the same (model version, seed, index, category), or genuine files fail verification.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.storage import LocalStore, open_store
from db.tables import Image, ModelVersion
from models.config import FASHION_CATEGORIES
from tests.pipeline import make_model_version, make_tenant
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.generator_cache import GeneratorCache
from workers.pixels import render_pixels
from workers.verification import verify_file

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "fashion-cgan" / "generator.pt"
IMAGES = 2000
SEED = 31
COAT = FASHION_CATEGORIES.index("coat")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass(frozen=True)
class ShippedJob:
    """2,000 coats of the shipped model made by the worker function, and what verifies them."""

    files: dict[int, bytes]
    session_factory: sessionmaker[Session]
    store: LocalStore


def _publish_nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Chunks run in-process here."""


@pytest.fixture(scope="module")
def shipped_job(tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path) -> Iterator[ShippedJob]:
    """The shipped fashion-cgan registered on SQLite + a local folder; a 2,000-image job at the default batch."""
    folder = tmp_path_factory.mktemp("shipped")
    database = folder / "catalogan.db"
    database.write_bytes(_sqlite_template.read_bytes())
    engine = make_engine(f"sqlite:///{database}")
    session_factory = make_session_factory(engine)
    store = open_store((folder / "objects").as_uri())
    assert isinstance(store, LocalStore)
    model = make_model_version(
        session_factory,
        checkpoint=SHIPPED.read_bytes(),
        store=store,
        categories=FASHION_CATEGORIES,
        name="fashion-cgan",
    )
    pool = ThreadPoolExecutor(max_workers=2)
    ctx = ChunkContext(
        session_factory=session_factory,
        store=store,
        generators=GeneratorCache(store, device="cpu"),
        settings=WorkerSettings(),  # the default batch size
        worker_name="test-worker",
        pool=pool,
    )
    planned = submit_job(
        session_factory,
        parse_job_spec({"items": [{"category": "coat", "count": IMAGES}], "seed": SEED, "chunk_size": 500}),
        tenant_id=make_tenant(session_factory),
        model_version=model,
        publisher=_publish_nothing,
    )
    assert [generate_chunk(ctx, chunk_id) for chunk_id in planned.chunk_ids] == [
        ChunkOutcome.SUCCEEDED
    ] * len(planned.chunk_ids)
    with session_factory() as session:
        rows = session.scalars(select(Image).where(Image.job_id == planned.job_id)).all()
        files = {row.index: store.get(row.key) for row in rows if row.key}
    yield ShippedJob(files, session_factory, store)
    pool.shutdown(wait=True)
    engine.dispose()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)))[:, :, None]  # (H, W, 1)


def test_every_worker_file_regenerates_alone_byte_for_byte(shipped_job: ShippedJob) -> None:
    # Given 2,000 files the worker rendered in batches of the default size
    assert sorted(shipped_job.files) == list(range(IMAGES))
    generators = GeneratorCache(shipped_job.store, device="cpu")
    # When each is regenerated alone through the verify path (a batch of one)
    failed = [
        index
        for index, data in shipped_job.files.items()
        if not verify_file(
            data, regenerate=True, session_factory=shipped_job.session_factory, generators=generators
        ).matches
    ]
    # Then all 2,000 are byte-identical
    assert failed == []


def test_batch_sizes_1_7_64_256_give_identical_pixels(shipped_job: ShippedJob) -> None:
    # Given the delivered pixels (worker batches of the default size)
    delivered = np.stack([_pixels(shipped_job.files[index]) for index in range(IMAGES)])  # (N, H, W, 1)
    generators = GeneratorCache(shipped_job.store, device="cpu")
    with shipped_job.session_factory() as session:
        version = session.scalars(select(ModelVersion)).one()
        session.expunge(version)
    generator = generators.get(version)
    for batch in (1, 7, 64, 256):
        # When the same images are rendered in batches of this size (batch 1: the first 250, as verify does)
        count = 250 if batch == 1 else IMAGES
        rendered = np.concatenate(
            [
                render_pixels(generator, SEED, COAT, range(start, min(start + batch, count)))
                for start in range(0, count, batch)
            ]
        )
        # Then every pixel equals the delivered one
        differing = int((rendered != delivered[:count]).reshape(count, -1).any(axis=1).sum())
        assert differing == 0, f"batch {batch}: {differing} images differ"
