"""Job planning: validation errors name the field and the rule; planning is O(chunks) in one transaction."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.errors import ConflictError, PlanningError
from db.planning import JobSpec, PlannedJob, SubmitLimits, parse_job_spec, submit_job
from db.status import ChunkStatus, JobStatus, ModelVersionStatus
from db.tables import Chunk, Image, Job, JobItem, ModelVersion, Tenant
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
    # Then it has ceil(600000/256) + ceil(400000/256) chunks and no image rows; the first 32 (the tenant's
    # publish window) are published once, the others wait in SQL for room (db.publish_window)
    assert len(planned.chunk_ids) == 2344 + 1563
    assert publisher.calls == [("bulk", list(planned.chunk_ids[:32]))]
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
        assert all(chunk.status is ChunkStatus.PENDING for chunk in chunks)
        assert all(chunk.enqueued_at is not None for chunk in chunks[:32])
        assert all(chunk.enqueued_at is None for chunk in chunks[32:])


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
    # Then it is committed, and its chunks count as published (marked before the send): the reaper's
    # lost-message step publishes them again once the queue is short
    assert not planned.published and len(planned.chunk_ids) == 3 and planned.seed == 5
    with session_factory() as session:
        enqueued = session.scalars(select(Chunk.enqueued_at).where(Chunk.job_id == planned.job_id)).all()
        assert len(enqueued) == 3 and None not in enqueued
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


def test_operator_limits_and_quotas_refuse_before_anything_is_written(
    session_factory: sessionmaker[Session],
) -> None:
    # Given a tenant allowed 5 images a day and a model version
    tenant_id = make_tenant(session_factory)
    with session_factory() as session, session.begin():
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.images_per_day = 5
    model_version = make_model_version(session_factory)
    spec = parse_job_spec({"items": [{"category": "a", "count": 4}, {"category": "b", "count": 4}]})
    publisher = RecordingPublisher()

    def submit(limits: SubmitLimits) -> PlannedJob:
        return submit_job(
            session_factory,
            spec,
            tenant_id=tenant_id,
            model_version=model_version,
            publisher=publisher,
            limits=limits,
        )

    # When the operator allows 3 images per item, then the error names the first item's count and the rule
    with pytest.raises(PlanningError) as caught:
        submit(SubmitLimits(max_images_per_item=3))
    assert (caught.value.field, caught.value.rule) == ("items[0].count", "max_images_per_item")
    # When the tenant's quotas apply, then 8 images are over its whole 5 a day: a rule broken, not a wait
    with pytest.raises(PlanningError, match="5 images per day") as over:
        submit(SubmitLimits(tenant_quotas=True))
    assert (over.value.field, over.value.rule) == ("items", "images_per_day")
    # And nothing was written or published; without quotas (a trusted door) the same spec is planned
    with session_factory() as session:
        assert _count(session, Job) == 0 and _count(session, Chunk) == 0
    assert publisher.calls == []
    assert submit(SubmitLimits()).images_total == 8


def test_the_model_is_resolved_by_the_submit_path_and_a_retired_one_is_refused(
    session_factory: sessionmaker[Session],
) -> None:
    # Given tiny@1 in production and tiny@2 retired
    tenant_id = make_tenant(session_factory)
    production = make_model_version(session_factory)
    retired = make_model_version(session_factory, version=2)
    with session_factory() as session, session.begin():
        row = session.get(ModelVersion, retired.id)
        assert row is not None
        row.status = ModelVersionStatus.RETIRED

    def submit(model: str | None) -> PlannedJob:
        values: dict[str, object] = {"items": [{"category": "a", "count": 1}]}
        if model is not None:
            values["model"] = model
        return submit_job(
            session_factory, parse_job_spec(values), tenant_id=tenant_id, publisher=RecordingPublisher()
        )

    # When no model is named, or only the name, then the production version runs the job
    for model in (None, "tiny"):
        planned = submit(model)
        with session_factory() as session:
            job = session.get(Job, planned.job_id)
            assert job is not None and job.model_version_id == production.id
    # When the retired version or an unknown name is named, then the error names the field `model` and the rule
    with pytest.raises(PlanningError) as caught:
        submit("tiny@2")
    assert (caught.value.field, caught.value.rule) == ("model", "not_retired")
    with pytest.raises(PlanningError) as caught:
        submit("sofa-gan")
    assert (caught.value.field, caught.value.rule) == ("model", "registered")


def test_the_operator_sets_the_default_chunk_size_per_queue(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an operator who sets larger default chunks for bulk and backfill (a GPU fleet)
    monkeypatch.setenv("CATALOGAN_CHUNK_SIZE_BULK", "4096")
    monkeypatch.setenv("CATALOGAN_CHUNK_SIZE_BACKFILL", "2000")
    monkeypatch.delenv("CATALOGAN_CHUNK_SIZE_INTERACTIVE", raising=False)
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)

    def planned_chunks(**fields: object) -> tuple[int, int]:
        spec = parse_job_spec({"model": "tiny", "items": [{"category": "a", "count": 10_000}], **fields})
        planned = submit_job(
            session_factory,
            spec,
            tenant_id=tenant_id,
            model_version=model_version,
            publisher=RecordingPublisher(),
        )
        with session_factory() as session:
            job = session.get(Job, planned.job_id)
            assert job is not None
            return job.chunk_size, len(planned.chunk_ids)

    # When jobs without a chunk_size are planned, then each queue's chunks follow the setting
    assert planned_chunks() == (4096, 3)  # bulk, the default queue
    assert planned_chunks(queue="backfill") == (2000, 5)
    assert planned_chunks(queue="interactive") == (32, 313)  # unset: the built-in default
    # And a job's own chunk_size, or a tar job's shard size, is not the queue's default
    assert planned_chunks(chunk_size=100) == (100, 100)
    assert planned_chunks(output_format="tar") == (1000, 10)


@pytest.mark.parametrize("value", ["0", "5000", "many"])
def test_a_bad_chunk_size_setting_names_the_variable_and_plans_nothing(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from db.pipeline_settings import ChunkSizeSettings
    from db.settings import SettingsError

    # Given a chunk size setting outside 1–4096 (or not a number)
    monkeypatch.setenv("CATALOGAN_CHUNK_SIZE_BULK", value)
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    # When the settings are read, or a job relying on them is submitted
    with pytest.raises(SettingsError, match="CATALOGAN_CHUNK_SIZE_BULK"):
        ChunkSizeSettings()
    spec = parse_job_spec({"model": "tiny", "items": [{"category": "a", "count": 10}]})
    with pytest.raises(SettingsError, match="CATALOGAN_CHUNK_SIZE_BULK"):
        submit_job(
            session_factory,
            spec,
            tenant_id=tenant_id,
            model_version=model_version,
            publisher=RecordingPublisher(),
        )
    # Then nothing was planned
    with session_factory() as session:
        assert _count(session, Job) == 0
