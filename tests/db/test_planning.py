"""Job planning: validation errors name the field and the rule; planning is O(chunks) in one transaction."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.errors import ConflictError, PlanningError
from db.planning import JobSpec, PlannedJob, parse_job_spec, submit_job
from db.status import ChunkStatus, JobStatus
from db.tables import Chunk, Image, Job, JobItem
from tests.pipeline import make_model_version, make_tenant


class RecordingPublisher:
    """A Publisher that records what it was asked to send (the broker itself is tested with real workers)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.fail = fail

    def __call__(self, queue: str, chunk_ids: Sequence[int]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.calls.append((queue, list(chunk_ids)))


def _count(session: Session, table: type) -> int:
    return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_a_million_image_job_plans_chunks_and_no_image_rows(session_factory: sessionmaker[Session]) -> None:
    # Given a tenant and a model version with three categories
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    spec = parse_job_spec(
        {"model": "tiny", "items": [{"category": "a", "count": 600_000}, {"category": "b", "count": 400_000}]}
    )
    publisher = RecordingPublisher()
    # When a 1,000,000-image job is submitted with the default bulk chunk size (256)
    planned = submit_job(
        session_factory, spec, tenant_id=tenant_id, model_version=model_version, publisher=publisher
    )
    # Then it has ceil(600000/256) + ceil(400000/256) chunks, all published once, and no image rows
    assert len(planned.chunk_ids) == 2344 + 1563
    assert publisher.calls == [("bulk", list(planned.chunk_ids))]
    with session_factory() as session:
        assert _count(session, Image) == 0
        assert _count(session, Chunk) == 3907
        job = session.get(Job, planned.job_id)
        assert job is not None and job.status is JobStatus.QUEUED
        assert (job.images_total, job.chunks_total, job.chunk_size) == (1_000_000, 3907, 256)
        assert 0 <= job.seed < 2**63  # chosen and recorded
        chunks = session.scalars(
            select(Chunk).where(Chunk.job_id == job.id).order_by(Chunk.start_index)
        ).all()
        assert chunks[0].start_index == 0 and chunks[-1].stop_index == 1_000_000
        assert all(a.stop_index == b.start_index for a, b in itertools.pairwise(chunks))
        assert chunks[2343].stop_index == 600_000  # chunks never straddle two items
        assert all(chunk.enqueued_at is not None and chunk.status is ChunkStatus.PENDING for chunk in chunks)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"items": []}, "items: List should have at least 1 item"),
        (
            {"items": [{"category": "a", "count": 0}]},
            "items[0].count: Input should be greater than or equal to 1",
        ),
        (
            {"items": [{"category": "a", "count": 1, "sku": "../etc"}]},
            "items[0].sku: sku '../etc': must not contain '/'",
        ),
        (
            {"items": [{"category": "a", "count": 1}], "output_format": "gif"},
            "output_format: Input should be 'png', 'webp' or 'tar'",
        ),
        (
            {"items": [{"category": "a", "count": 1}], "chunk_size": 10**6},
            "chunk_size: Input should be less than or equal to 4096",
        ),
        ({"items": [{"category": "a", "count": 1}], "queue": "urgent"}, "queue: Input should be"),
        (
            {"items": [{"category": "a", "count": 1}], "webhook_url": "ftp://x"},
            "webhook_url: must be an http",
        ),
        (
            {"items": [{"category": "a", "count": 1}], "colour": "red"},
            "colour: Extra inputs are not permitted",
        ),
    ],
)
def test_invalid_specs_name_the_field_and_the_rule(spec: dict[str, object], message: str) -> None:
    # Given a spec that breaks one rule, when it is parsed, then the error names the field and the rule
    with pytest.raises(PlanningError) as caught:
        parse_job_spec(spec)
    assert message in str(caught.value)


def test_unknown_category_is_rejected_naming_the_model_categories(
    session_factory: sessionmaker[Session],
) -> None:
    # Given a model version with categories a, b, c
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    spec = parse_job_spec({"items": [{"category": "a", "count": 1}, {"category": "sofa", "count": 2}]})
    # When a job asks for "sofa", then planning refuses and writes nothing
    with pytest.raises(
        PlanningError, match=r"items\[1\]\.category: 'sofa' is not a category of model tiny@1"
    ):
        submit_job(
            session_factory,
            spec,
            tenant_id=tenant_id,
            model_version=model_version,
            publisher=RecordingPublisher(),
        )
    with session_factory() as session:
        assert _count(session, Job) == 0 and _count(session, JobItem) == 0


def test_broker_failure_after_commit_keeps_the_job_for_the_reaper(
    session_factory: sessionmaker[Session],
) -> None:
    # Given a broker that refuses messages
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    spec = parse_job_spec({"items": [{"category": "A", "count": 10}], "chunk_size": 4, "seed": 5})
    # When a job is submitted
    planned = submit_job(
        session_factory,
        spec,
        tenant_id=tenant_id,
        model_version=model_version,
        publisher=RecordingPublisher(True),
    )
    # Then it is committed but not marked enqueued (the reaper publishes chunks never enqueued)
    assert not planned.published and len(planned.chunk_ids) == 3 and planned.seed == 5
    with session_factory() as session:
        enqueued = session.scalars(select(Chunk.enqueued_at).where(Chunk.job_id == planned.job_id)).all()
        assert enqueued == [None, None, None]
        item = session.scalars(select(JobItem).where(JobItem.job_id == planned.job_id)).one()
        assert item.category == "a"  # matched case-insensitively, stored as the model names it


def test_idempotency_key_returns_the_same_job_or_conflicts(session_factory: sessionmaker[Session]) -> None:
    # Given a job submitted with an idempotency key
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    spec = parse_job_spec({"items": [{"category": "a", "count": 3}], "seed": 1})
    publisher = RecordingPublisher()

    def submit(spec: JobSpec) -> PlannedJob:
        return submit_job(
            session_factory,
            spec,
            tenant_id=tenant_id,
            model_version=model_version,
            publisher=publisher,
            idempotency_key="k1",
        )

    first = submit(spec)
    # When the same request comes again, then it gets the same job (published once); a different body conflicts
    again = submit(spec)
    assert again.existing and again.job_id == first.job_id and again.chunk_ids == first.chunk_ids
    assert len(publisher.calls) == 1
    other = parse_job_spec({"items": [{"category": "b", "count": 3}], "seed": 1})
    with pytest.raises(ConflictError):
        submit(other)
