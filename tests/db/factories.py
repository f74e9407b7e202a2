"""Rows for tests: a tenant, a model version and a job with items and chunks, inserted directly."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.status import JobStatus
from db.tables import Chunk, Job, JobItem, ModelVersion, Tenant


@dataclass(frozen=True)
class JobRows:
    """Ids of a job inserted by `insert_job`."""

    tenant_id: str
    job_id: str
    item_id: int
    chunk_ids: list[int]


def insert_job(
    factory: sessionmaker[Session],
    *,
    chunks: int = 2,
    chunk_size: int = 4,
    status: JobStatus = JobStatus.QUEUED,
) -> JobRows:
    """Insert a tenant, a model version, a job with one item of `chunks * chunk_size` images, and its chunks."""
    with transaction(factory) as session:
        tenant = Tenant(id=uuid.uuid4().hex, name=f"tenant-{uuid.uuid4().hex[:8]}")
        model = ModelVersion(
            name=f"m-{uuid.uuid4().hex[:6]}", version=1, preset="tiny", checkpoint_uri="memory://x"
        )
        session.add_all([tenant, model])
        session.flush()
        job = Job(
            id=uuid.uuid4().hex,
            tenant_id=tenant.id,
            model_version_id=model.id,
            status=status,
            seed=7,
            chunk_size=chunk_size,
            images_total=chunks * chunk_size,
            chunks_total=chunks,
        )
        session.add(job)
        session.flush()
        item = JobItem(
            job_id=job.id,
            position=0,
            category="Sneaker",
            class_index=7,
            count=chunks * chunk_size,
            first_index=0,
        )
        session.add(item)
        session.flush()
        rows = [
            Chunk(job_id=job.id, item_id=item.id, start_index=n * chunk_size, stop_index=(n + 1) * chunk_size)
            for n in range(chunks)
        ]
        session.add_all(rows)
        session.flush()
        return JobRows(tenant.id, job.id, item.id, [row.id for row in rows])
