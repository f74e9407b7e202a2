"""Creative control at submit: the recipe a job stores, and the 422s that name the field."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import PlanningError
from db.job_specs import request_sha256
from db.latent_control import parse_control, provenance_fields
from db.planning import parse_job_spec, submit_job
from db.status import ImageStatus
from db.tables import Chunk, Image, Job, JobItem, ModelVersion
from tests.pipeline import make_model_version, make_tenant


def _nested_variations(depth: int) -> dict[str, object]:
    """A recipe whose sources nest `depth` generations deep."""
    recipe: dict[str, object] = {"truncation": 0.5}
    for _ in range(depth):
        source = {"job_id": "j", "index": 0, "seed": 1, "redraw": 0, "control": recipe}
        recipe = {"variation": {"source": source, "strength": 0.5}}
    return recipe


def _publish_nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Planning tests: chunks are not run."""


def _delivered_job(
    session_factory: sessionmaker[Session],
    tenant_id: str,
    model_version: ModelVersion,
    spec: dict[str, object],
) -> str:
    """Submit a job and mark every image delivered, as finished chunks would (the worker is tested elsewhere)."""
    planned = submit_job(
        session_factory,
        parse_job_spec({"seed": 5, **spec}),
        tenant_id=tenant_id,
        publisher=_publish_nothing,
        model_version=model_version,
    )
    with transaction(session_factory) as session:
        items = session.scalars(select(JobItem).where(JobItem.job_id == planned.job_id)).all()
        for chunk in session.scalars(select(Chunk).where(Chunk.job_id == planned.job_id)):
            # A packed chunk spans several items: each index takes the category of the item it falls in.
            for index in range(chunk.start_index, chunk.stop_index):
                item = next(i for i in items if i.first_index <= index < i.first_index + i.count)
                session.add(
                    Image(
                        job_id=planned.job_id,
                        chunk_id=chunk.id,
                        index=index,
                        category=item.category,
                        status=ImageStatus.SUCCEEDED,
                        redraws=1 if index == 1 else 0,
                        attempt=1,
                        key=f"k/{index}",
                    )
                )
    return planned.job_id


def _submit(session_factory: sessionmaker[Session], tenant_id: str, spec: dict[str, object]) -> Job:
    planned = submit_job(
        session_factory, parse_job_spec({"seed": 9, **spec}), tenant_id=tenant_id, publisher=_publish_nothing
    )
    with session_factory() as session:
        job = session.get(Job, planned.job_id)
        assert job is not None
        return job


def test_psi_one_is_a_plain_job_and_other_psi_is_recorded(session_factory: sessionmaker[Session]) -> None:
    """Given ψ 1.0 and ψ 0.5 / When submitted / Then ψ 1.0 hashes and stores exactly as no ψ, ψ 0.5 is in the
    job's options."""
    tenant_id = make_tenant(session_factory)
    make_model_version(session_factory)
    plain = {"items": [{"category": "a", "count": 2}]}
    assert request_sha256(parse_job_spec({**plain, "truncation": 1.0})) == request_sha256(
        parse_job_spec(plain)
    )
    assert _submit(session_factory, tenant_id, {**plain, "truncation": 1.0}).options == {}
    assert _submit(session_factory, tenant_id, {**plain, "truncation": 0.5}).options == {
        "latent_control": {"truncation": 0.5}
    }


def test_a_variation_job_takes_its_sources_category_model_and_psi(
    session_factory: sessionmaker[Session],
) -> None:
    """Given a delivered image of a ψ 0.7 job / When 4 variations are asked for / Then the job has one item of
    the source's category, the source's model version, and a recipe with the source (redraw included)."""
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    source_job = _delivered_job(
        session_factory,
        tenant_id,
        model_version,
        {"items": [{"category": "b", "count": 3}], "truncation": 0.7},
    )
    job = _submit(
        session_factory,
        tenant_id,
        {"variation": {"source": {"job_id": source_job, "index": 1}, "strength": 0.25, "count": 4}},
    )
    with session_factory() as session:
        items = session.scalars(select(JobItem).where(JobItem.job_id == job.id)).all()
    assert [(item.category, item.count) for item in items] == [("b", 4)]
    assert job.model_version_id == model_version.id and job.images_total == 4
    assert job.options["latent_control"] == {
        "variation": {
            "source": {
                "job_id": source_job,
                "index": 1,
                "seed": 5,
                "redraw": 1,
                "control": {"truncation": 0.7},
            },
            "strength": 0.25,
        },
        "truncation": 0.7,
    }
    # The recipe survives the trip through a file's provenance.
    fields = dict(provenance_fields(job.options["latent_control"], 2))
    assert fields["variation_of"] == f"{source_job}/1" and fields["strength"] == "0.25"
    assert parse_control(fields["latent_control"]) == job.options["latent_control"]


def test_an_interpolation_job_has_one_frame_per_image(session_factory: sessionmaker[Session]) -> None:
    """Given two delivered images of one category / When 6 frames are asked for / Then 6 images are planned
    and each file will name its frame."""
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    source_job = _delivered_job(
        session_factory, tenant_id, model_version, {"items": [{"category": "a", "count": 2}]}
    )
    ends = {"start": {"job_id": source_job, "index": 0}, "end": {"job_id": source_job, "index": 1}}
    job = _submit(session_factory, tenant_id, {"interpolation": {**ends, "frames": 6}})
    assert job.images_total == 6
    assert dict(provenance_fields(job.options["latent_control"], 5))["frame"] == "5/5"


@pytest.mark.parametrize(
    ("spec", "field", "rule"),
    [
        ({"items": [{"category": "a", "count": 1}], "truncation": 0.29}, "truncation", "greater_than_equal"),
        ({"items": [{"category": "a", "count": 1}], "truncation": 1.01}, "truncation", "less_than_equal"),
        (
            {"items": [{"category": "a", "count": 1}], "options": {"latent_control": {"truncation": 0.5}}},
            "options",
            "value_error",
        ),
        (
            {"variation": {"source": {"job_id": "x", "index": 0}, "strength": 1.5, "count": 1}},
            "variation.strength",
            "less_than_equal",
        ),
        (
            {
                "interpolation": {
                    "start": {"job_id": "x", "index": 0},
                    "end": {"job_id": "x", "index": 1},
                    "frames": 4,
                },
                "truncation": 0.5,
            },
            "truncation",
            "value_error",
        ),
    ],
)
def test_bad_control_fields_name_the_field(spec: dict[str, object], field: str, rule: str) -> None:
    """Given a control field out of its range / When parsed / Then the error names the field and the rule."""
    with pytest.raises(PlanningError) as caught:
        parse_job_spec(spec)
    assert (caught.value.field, caught.value.rule) == (field, rule)


def test_sources_must_be_this_tenants_delivered_images_of_one_model_and_category(
    session_factory: sessionmaker[Session],
) -> None:
    """Given images of tenant A (two model versions, two categories) / When tenant B asks for a variation of
    one, or A interpolates across versions or categories / Then each is refused naming the field, and no job
    is created."""
    tenant_a, tenant_b = make_tenant(session_factory), make_tenant(session_factory)
    version_1 = make_model_version(session_factory)
    version_2 = make_model_version(session_factory, version=2)
    job_1 = _delivered_job(
        session_factory,
        tenant_a,
        version_1,
        {"items": [{"category": "a", "count": 1}, {"category": "b", "count": 1}]},
    )
    job_2 = _delivered_job(session_factory, tenant_a, version_2, {"items": [{"category": "a", "count": 1}]})
    cases = [
        (
            tenant_b,
            {"variation": {"source": {"job_id": job_1, "index": 0}, "strength": 0.5, "count": 2}},
            ("variation.source", "delivered_image"),
        ),
        (
            tenant_a,
            {"variation": {"source": {"job_id": job_1, "index": 7}, "strength": 0.5, "count": 2}},
            ("variation.source", "delivered_image"),
        ),
        (
            tenant_a,
            {
                "interpolation": {
                    "start": {"job_id": job_1, "index": 0},
                    "end": {"job_id": job_2, "index": 0},
                    "frames": 3,
                }
            },
            ("interpolation.end", "same_model_version"),
        ),
        (
            tenant_a,
            {
                "interpolation": {
                    "start": {"job_id": job_1, "index": 0},
                    "end": {"job_id": job_1, "index": 1},
                    "frames": 3,
                }
            },
            ("interpolation.end", "same_category"),
        ),
        (
            tenant_a,
            {
                "model": "tiny@2",
                "variation": {"source": {"job_id": job_1, "index": 0}, "strength": 0.5, "count": 2},
            },
            ("model", "source_model_version"),
        ),
    ]
    with session_factory() as session:
        jobs_before = len(session.scalars(select(Job.id)).all())
    for tenant_id, spec, expected in cases:
        with pytest.raises(PlanningError) as caught:
            _submit(session_factory, tenant_id, spec)
        assert (caught.value.field, caught.value.rule) == expected
        assert str(caught.value).startswith(expected[0])
    with session_factory() as session:
        assert len(session.scalars(select(Job.id)).all()) == jobs_before


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"truncation": 0.1}',
        '{"variation": {"source": {"job_id": "j", "index": -1, "seed": 1, "redraw": 0}, "strength": 0.5}}',
        '{"interpolation": {"start": 1, "end": 2, "frames": 3}}',
        json.dumps(_nested_variations(6)),
    ],
)
def test_a_recipe_read_from_a_file_is_checked(text: str) -> None:
    """Given a malformed, out-of-range or too deeply nested recipe in a file / When parsed / Then it is
    refused (while the deepest recipe a job can make is read back)."""
    with pytest.raises(ValueError, match="latent_control"):
        parse_control(text)
    assert parse_control(json.dumps(_nested_variations(4))) == _nested_variations(4)
