"""The check every fault test ends with: objects = rows = requested, nothing lost, nothing duplicated."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from db.status import ChunkStatus, ImageStatus, JobStatus
from db.tables import Chunk, Image
from tests.pipeline import PipelineStack


def assert_exactly_once(stack: PipelineStack, job_id: str, requested: int) -> None:
    """The job succeeded with `requested` objects and `requested` succeeded rows, one per index, whose sha256
    and size match the stored bytes, and its counters say the same."""
    job = stack.job(job_id)
    assert (job.status, job.images_done, job.images_failed) == (JobStatus.SUCCEEDED, requested, 0), (
        job.status,
        job.images_done,
        job.images_failed,
        job.error,
    )
    keys = stack.image_keys(job_id)
    with stack.session_factory() as session:
        images = session.scalars(select(Image).where(Image.job_id == job_id)).all()
        chunks = session.scalars(select(Chunk).where(Chunk.job_id == job_id)).all()
    assert len(keys) == len(set(keys)) == requested, f"{len(keys)} objects for {requested} images"
    assert sorted(image.index for image in images) == list(range(requested)), "rows missing or duplicated"
    assert {image.key for image in images} == set(keys)
    assert all(chunk.status is ChunkStatus.SUCCEEDED for chunk in chunks)
    assert sum(chunk.images_done for chunk in chunks) == requested
    for image in images:
        assert image.status is ImageStatus.SUCCEEDED
        data = stack.store.get(str(image.key))
        assert hashlib.sha256(data).hexdigest() == image.sha256 and len(data) == image.size_bytes
