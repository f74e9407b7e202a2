"""The worker's memorization gate: a model version that replays its training images gets every image rejected."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.status import ImageStatus, JobStatus
from db.storage import ObjectStore
from db.tables import Image, ModelVersion
from models.memorization_index import INDEX_FILE_NAME, METRICS_KEY, build_index_from_images, index_metrics
from tests.pipeline import job_row, make_model_version, make_tenant
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.finalize import finalize_job
from workers.generator_cache import GeneratorCache, GeneratorLike
from workers.quality_gate import NEAR_COPY_ERROR

CATEGORIES = ("a", "b", "c")


class Memorizer:
    """A generator that answers every latent with one of its training images (uint8 (B, 28, 28, 1))."""

    z_dim = 16
    categories = CATEGORIES
    checkpoint_sha256 = "m" * 64

    def __init__(self, train_images: np.ndarray) -> None:
        self.train_images = train_images

    def generate(self, class_indices: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Training image (latent-hashed) per request."""
        picks = (latents.abs().sum(dim=1) * 1000).long() % len(self.train_images)
        return torch.from_numpy(self.train_images[picks.numpy()])[..., None]


@pytest.fixture(scope="module")
def training_images() -> np.ndarray:
    """300 "training" images (smooth random blobs) and 300 held-out ones from the same distribution."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(600, 7, 7)).astype(np.uint8)
    return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)  # (600, 28, 28)


@pytest.fixture
def memorizer_model(
    session_factory: sessionmaker[Session], local_store: ObjectStore, training_images: np.ndarray
) -> ModelVersion:
    """A registered model version whose memorization index holds the memorizer's training images."""
    index = build_index_from_images(training_images[:300], training_images[300:])
    data = index.to_bytes()
    key = f"models/memorizer/1/{INDEX_FILE_NAME}"
    local_store.put(key, data)
    row = make_model_version(session_factory, checkpoint=b"memorizer", store=local_store, name="memorizer")
    with transaction(session_factory) as session:
        stored = session.get(ModelVersion, row.id)
        assert stored is not None
        stored.metrics = {METRICS_KEY: index_metrics(index, local_store.uri(key), data)}
        session.flush()
        session.expunge(stored)
    return stored


@pytest.fixture
def context(
    session_factory: sessionmaker[Session], local_store: ObjectStore, training_images: np.ndarray
) -> Iterator[ChunkContext]:
    """A worker whose generator cache loads the memorizer for any checkpoint."""

    def load(data: bytes, device: str) -> GeneratorLike:
        return Memorizer(training_images[:300])

    pool = ThreadPoolExecutor(max_workers=2)
    ctx = ChunkContext(
        session_factory=session_factory,
        store=local_store,
        generators=GeneratorCache(local_store, device="cpu", loader=load),
        settings=WorkerSettings(batch_size=8, upload_threads=2),
        worker_name="test-worker",
        pool=pool,
        on_job_finished=lambda job_id: finalize_job(session_factory, local_store, job_id),
    )
    yield ctx
    pool.shutdown(wait=True)


def _publish_nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Chunks run in-process here."""


def test_a_memorizer_gets_every_image_rejected_as_a_near_copy(
    context: ChunkContext, memorizer_model: ModelVersion
) -> None:
    # Given a model version that replays its training images, with its memorization index registered
    planned = submit_job(
        context.session_factory,
        parse_job_spec({"model": "memorizer", "items": [{"category": "b", "count": 12}], "seed": 4}),
        tenant_id=make_tenant(context.session_factory),
        model_version=memorizer_model,
        publisher=_publish_nothing,
    )
    # When its job runs (no quality gate asked for: the memorization gate applies on its own)
    assert [generate_chunk(context, chunk_id) for chunk_id in planned.chunk_ids] == [ChunkOutcome.SUCCEEDED]
    # Then every image was redrawn 3 times, still a copy, and rejected with the reason; nothing was stored
    with context.session_factory() as session:
        rows = session.scalars(select(Image).where(Image.job_id == planned.job_id)).all()
    assert len(rows) == 12
    assert {(row.status, row.redraws, row.error, row.key) for row in rows} == {
        (ImageStatus.REJECTED, 3, NEAR_COPY_ERROR, None)
    }
    job = job_row(context.session_factory, planned.job_id)
    assert (job.status, job.images_done, job.images_rejected) == (JobStatus.SUCCEEDED, 0, 12)
    assert job.manifest_key is not None
    manifest = [json.loads(line) for line in context.store.get(job.manifest_key).decode().splitlines()]
    assert {(row["status"], row["error"]) for row in manifest} == {("rejected", NEAR_COPY_ERROR)}
