"""Creative control at submit: the recipe a job stores, and the 422s that name the field."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import PlanningError
from db.job_specs import request_sha256
from db.latent_control import MAX_SOURCE_DEPTH, parse_control, provenance_fields
from db.planning import parse_job_spec, submit_job
from db.status import ImageStatus, JobStatus, ModelVersionStatus
from db.tables import Chunk, Image, Job, JobItem, ModelVersion, utcnow
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
    """Submit a job and mark every image delivered and the job succeeded, as finished chunks would (the worker
    is tested elsewhere)."""
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
                        sha256=_sha256_of(planned.job_id, index),
                    )
                )
        session.execute(
            update(Job)
            .where(Job.id == planned.job_id)
            .values(status=JobStatus.SUCCEEDED, finished_at=utcnow(), images_done=Job.images_total)
        )
    return planned.job_id


def _sha256_of(job_id: str, index: int) -> str:
    """The sha256 recorded for image `index` of `job_id` in these tests (what its file's bytes hash to)."""
    return hashlib.sha256(f"{job_id}/{index}".encode()).hexdigest()


def _set_job(session_factory: sessionmaker[Session], job_id: str, **values: object) -> None:
    with transaction(session_factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def _jobs(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return len(session.scalars(select(Job.id)).all())


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


def _variation_of(job_id: str, index: int = 0, **source: object) -> dict[str, object]:
    return {
        "variation": {"source": {"job_id": job_id, "index": index, **source}, "strength": 0.5, "count": 2}
    }


def _interpolation_of(job_id: str, end_job_id: str | None = None) -> dict[str, object]:
    ends = {"start": {"job_id": job_id, "index": 0}, "end": {"job_id": end_job_id or job_id, "index": 1}}
    return {"interpolation": {**ends, "frames": 3}}


@pytest.mark.parametrize(
    ("values", "rule", "words"),
    [
        ({"status": JobStatus.QUEUED, "finished_at": None}, "finished_job", "is queued"),
        ({"status": JobStatus.RUNNING, "finished_at": None}, "finished_job", "is running"),
        ({"status": JobStatus.CANCELLING, "finished_at": None}, "finished_job", "is cancelling"),
        ({"status": JobStatus.CANCELLED}, "finished_job", "is cancelled"),
        ({"status": JobStatus.FAILED}, "finished_job", "is failed"),
        ({"expires_at": utcnow() - dt.timedelta(seconds=1)}, "not_expired", "expired at"),
        # A DELETE sets expires_at to now: from that instant the job is being deleted.
        ({"expires_at": utcnow()}, "not_expired", "being deleted"),
    ],
    ids=["queued", "running", "cancelling", "cancelled", "failed", "expired", "being-deleted"],
)
def test_a_source_of_an_unfinished_or_expired_job_is_refused_naming_the_field(
    session_factory: sessionmaker[Session], values: dict[str, object], rule: str, words: str
) -> None:
    """Given delivered images of a job that is unfinished, cancelled, failed, expired or being deleted / When a
    variation of one, or an interpolation between two, is submitted / Then each is refused naming the source's
    field and the rule that says why, and no job is created."""
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    source_job = _delivered_job(
        session_factory, tenant_id, model_version, {"items": [{"category": "a", "count": 2}]}
    )
    _set_job(session_factory, source_job, **values)
    jobs_before = _jobs(session_factory)
    for spec, field in (
        (_variation_of(source_job), "variation.source"),
        (_interpolation_of(source_job), "interpolation.start"),
    ):
        with pytest.raises(PlanningError) as caught:
            _submit(session_factory, tenant_id, spec)
        assert (caught.value.field, caught.value.rule) == (field, rule)
        assert str(caught.value).startswith(f"{field}: job {source_job}") and words in str(caught.value)
    assert _jobs(session_factory) == jobs_before


def test_a_source_of_a_job_that_finished_with_failures_or_expires_later_is_taken(
    session_factory: sessionmaker[Session],
) -> None:
    """Given delivered images of a job completed with failures that expires tomorrow / When a variation of one is
    submitted / Then it is planned (its delivered images are as good a source as any)."""
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    source_job = _delivered_job(
        session_factory, tenant_id, model_version, {"items": [{"category": "a", "count": 2}]}
    )
    tomorrow = utcnow() + dt.timedelta(days=1)
    _set_job(session_factory, source_job, status=JobStatus.COMPLETED_WITH_FAILURES, expires_at=tomorrow)
    assert _submit(session_factory, tenant_id, _variation_of(source_job)).images_total == 2


def test_a_source_named_by_its_file_must_be_that_very_file(session_factory: sessionmaker[Session]) -> None:
    """Given a delivered image and the sha256 recorded for it / When a variation names it with that sha256, with
    another sha256, or another tenant names it with the right sha256 / Then the first is planned, the second is
    refused on `variation.source.sha256` (an interpolation end on `interpolation.end.sha256`), and the third
    exactly as an image that does not exist (nothing about the image is revealed)."""
    tenant_a, tenant_b = make_tenant(session_factory), make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    source_job = _delivered_job(
        session_factory, tenant_a, model_version, {"items": [{"category": "a", "count": 2}]}
    )
    right, wrong = _sha256_of(source_job, 0), _sha256_of(source_job, 1)
    job = _submit(session_factory, tenant_a, _variation_of(source_job, 0, sha256=right))
    assert job.images_total == 2
    # The sha256 pins the file; the recipe (and so every file of the job) is that of JOB/INDEX.
    assert "sha256" not in json.dumps(job.options["latent_control"])
    jobs_before = _jobs(session_factory)
    with pytest.raises(PlanningError) as caught:
        _submit(session_factory, tenant_a, _variation_of(source_job, 0, sha256=wrong))
    assert (caught.value.field, caught.value.rule) == ("variation.source.sha256", "recorded_sha256")
    ends = _interpolation_of(source_job)
    ends["interpolation"]["end"]["sha256"] = right  # image 0's file, named as image 1  # type: ignore[index]
    with pytest.raises(PlanningError) as caught:
        _submit(session_factory, tenant_a, ends)
    assert (caught.value.field, caught.value.rule) == ("interpolation.end.sha256", "recorded_sha256")
    with pytest.raises(PlanningError) as other:
        _submit(session_factory, tenant_b, _variation_of(source_job, 0, sha256=right))
    with pytest.raises(PlanningError) as missing:
        _submit(session_factory, tenant_b, _variation_of("0" * 32, 0, sha256=right))
    assert (other.value.field, other.value.rule) == ("variation.source", "delivered_image")
    assert str(other.value).replace(source_job, "J") == str(missing.value).replace("0" * 32, "J")
    assert _jobs(session_factory) == jobs_before


def test_a_source_given_by_file_and_by_job_and_index_is_the_same_request() -> None:
    """Given a variation named by JOB/INDEX and the same one with its file's sha256 / When hashed / Then both are
    one request (`catalogan generate` derives the same job id, so the same files)."""
    plain = parse_job_spec(_variation_of("j", 3))
    pinned = parse_job_spec(_variation_of("j", 3, sha256="a" * 64))
    assert request_sha256(plain) == request_sha256(pinned)
    with pytest.raises(PlanningError) as caught:
        parse_job_spec(_variation_of("j", 3, sha256="A" * 64))
    assert caught.value.field == "variation.source.sha256"


def test_a_source_already_nested_too_deep_is_refused_at_submit(
    session_factory: sessionmaker[Session],
) -> None:
    """Given a delivered image whose job's recipe nests its sources MAX_SOURCE_DEPTH generations deep, and one
    nested a generation less / When a variation of each is submitted / Then the first is refused naming
    `variation.source` and rule `source_depth` (no job), the second is planned."""
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    deep, shallower = (
        _delivered_job(session_factory, tenant_id, model_version, {"items": [{"category": "a", "count": 1}]})
        for _ in range(2)
    )
    _set_job(session_factory, deep, options={"latent_control": _nested_variations(MAX_SOURCE_DEPTH)})
    _set_job(session_factory, shallower, options={"latent_control": _nested_variations(MAX_SOURCE_DEPTH - 1)})
    jobs_before = _jobs(session_factory)
    with pytest.raises(PlanningError) as caught:
        _submit(session_factory, tenant_id, _variation_of(deep))
    assert (caught.value.field, caught.value.rule) == ("variation.source", "source_depth")
    assert _jobs(session_factory) == jobs_before
    job = _submit(session_factory, tenant_id, _variation_of(shallower))
    assert parse_control(json.dumps(job.options["latent_control"])) == job.options["latent_control"]


def test_a_source_whose_model_version_was_retired_is_refused(session_factory: sessionmaker[Session]) -> None:
    """Given a delivered image of tiny@1, then tiny@1 retired / When a variation of it is submitted / Then it is
    refused on `model`, rule `not_retired`."""
    tenant_id = make_tenant(session_factory)
    model_version = make_model_version(session_factory)
    source_job = _delivered_job(
        session_factory, tenant_id, model_version, {"items": [{"category": "a", "count": 1}]}
    )
    with transaction(session_factory) as session:
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == model_version.id)
            .values(status=ModelVersionStatus.RETIRED)
        )
    with pytest.raises(PlanningError) as caught:
        _submit(session_factory, tenant_id, _variation_of(source_job))
    assert (caught.value.field, caught.value.rule) == ("model", "not_retired")


def _interpolation_recipe(frames: int, source_control: dict[str, object] | None = None) -> dict[str, object]:
    start: dict[str, object] = {"job_id": "j", "index": 0, "seed": 1, "redraw": 0}
    if source_control is not None:
        start = {**start, "index": 7, "control": source_control}
    end = {"job_id": "j", "index": 1, "seed": 1, "redraw": 0}
    return {"interpolation": {"start": start, "end": end, "frames": frames}}


def test_a_file_claiming_a_frame_beyond_its_interpolation_is_refused() -> None:
    """Given the recipe of a 5-frame interpolation / When a file says it is frame 4, frame 9, or frame -1, or a
    variation's source is frame 7 of a 5-frame interpolation / Then frame 4 is read back, and the others are
    refused as images no job could have made (rendered off the path, they would regenerate "bit for bit")."""
    recipe = _interpolation_recipe(5)
    text = json.dumps(recipe)
    assert parse_control(text, index=4) == recipe
    assert dict(provenance_fields(recipe, 4))["frame"] == "4/4"
    for index in (5, 9, -1):
        with pytest.raises(ValueError, match="not a frame of an interpolation of 5 frames"):
            parse_control(text, index=index)
        with pytest.raises(ValueError, match="not a frame"):
            provenance_fields(recipe, index)
    nested = {
        "variation": {
            "source": _interpolation_recipe(2, _interpolation_recipe(5))["interpolation"]["start"],
            "strength": 0.5,
        }
    }  # type: ignore[index]
    with pytest.raises(ValueError, match="index: image 7 is not a frame"):
        parse_control(json.dumps(nested))
