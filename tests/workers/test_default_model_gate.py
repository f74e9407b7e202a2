"""Jobs on the shipped fashion-cgan run the memorization gate: its registration gave it an index of Fashion-MNIST."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.model_versions import set_metrics
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.status import ImageStatus
from db.storage import ObjectStore
from db.tables import Image, ModelVersion
from models.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from models.default_model import ShippedIndexSpec, ensure_default_model, missing_training_data
from models.evaluator import default_evaluator, embed
from models.memorization_index import METRICS_KEY, build_index, put_index
from tests.pipeline import make_tenant
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.generator_cache import GeneratorCache
from workers.memorization import load_memorization_index
from workers.quality_gate import NEAR_COPY_ERROR

# Every 60th image of each split (1,000 train, 167 test): the real registration path, a few seconds on a CPU.
QUICK_INDEX = ShippedIndexSpec(every=60)


@pytest.fixture
def default_model(session_factory: sessionmaker[Session], local_store: ObjectStore) -> ModelVersion:
    """The shipped fashion-cgan, registered with a (small) memorization index of the installed Fashion-MNIST."""
    problem = missing_training_data(DEFAULT_ROOT)
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return ensure_default_model(session_factory, local_store, index=QUICK_INDEX)


def _context(
    session_factory: sessionmaker[Session], store: ObjectStore, pool: ThreadPoolExecutor
) -> ChunkContext:
    """A CPU worker with the real generator loader (no scorer cached yet)."""
    return ChunkContext(
        session_factory=session_factory,
        store=store,
        generators=GeneratorCache(store, device="cpu"),
        settings=WorkerSettings(batch_size=8, upload_threads=2),
        worker_name="test-worker",
        pool=pool,
    )


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """The worker's upload threads."""
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def _publish_nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Chunks run in-process here."""


def _run_job(ctx: ChunkContext, model: ModelVersion, seed: int) -> list[Image]:
    """12 sneakers from `model` with no quality_gate option, run in-process; their image rows."""
    planned = submit_job(
        ctx.session_factory,
        parse_job_spec(
            {"model": "fashion-cgan", "items": [{"category": "sneaker", "count": 12}], "seed": seed}
        ),
        tenant_id=make_tenant(ctx.session_factory),
        model_version=model,
        publisher=_publish_nothing,
    )
    assert {generate_chunk(ctx, chunk_id) for chunk_id in planned.chunk_ids} == {ChunkOutcome.SUCCEEDED}
    with ctx.session_factory() as session:
        return list(
            session.scalars(select(Image).where(Image.job_id == planned.job_id).order_by(Image.index))
        )


def test_a_job_on_the_default_model_is_checked_for_near_copies(
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    default_model: ModelVersion,
    pool: ThreadPoolExecutor,
) -> None:
    # Given the default model as `catalogan generate` registers it (with its memorization index)
    assert METRICS_KEY in default_model.metrics
    index = load_memorization_index(local_store, default_model)
    # When a job without any quality_gate option runs on it
    worker = _context(session_factory, local_store, pool)
    rows = _run_job(worker, default_model, seed=7)
    # Then every image went through the gate (scored), none is a near copy, and each delivered image's
    # nearest Fashion-MNIST training image is indeed farther than the threshold
    assert len(rows) == 12 and {row.status for row in rows} == {ImageStatus.SUCCEEDED}
    assert all(row.score is not None for row in rows)
    assert rows[0].key is not None
    pixels = np.stack([np.asarray(PILImage.open(io.BytesIO(local_store.get(str(row.key))))) for row in rows])
    distances, _ = index.nearest(embed(default_evaluator(), pixels)[0])
    assert (distances >= index.threshold).all()

    # Given the same model version whose index flags anything nearer than the farthest real test image
    held_out = load_fashion_mnist(DEFAULT_ROOT, "test")[0][::60]
    strict = build_index(index.train_features, embed(default_evaluator(), held_out)[0], quantile=1.0)
    entry = put_index(local_store, "models/fashion-cgan/shipped/strict-index.npz", strict)
    with transaction(session_factory) as session:
        row = session.get(ModelVersion, default_model.id)
        assert row is not None
        strict_model = set_metrics(session, row, {METRICS_KEY: entry})
    # When a job runs on it in the same worker (which cached a scorer with the first index)
    rows = _run_job(worker, strict_model, seed=7)
    # Then the new index is used: its near-copy distances reject images, with the memorization gate's reason
    rejected = [row for row in rows if row.status is ImageStatus.REJECTED]
    assert rejected and {(row.error, row.redraws, row.key) for row in rejected} == {
        (NEAR_COPY_ERROR, 3, None)
    }
