"""Truncation, variations and interpolation over `POST /v1/jobs` and the SDK: jobs planned from delivered
images of the tenant, and 422s naming the field for everything else."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.status import ImageStatus, JobStatus, ModelVersionStatus
from db.tables import Chunk, Image, Job, JobItem, ModelVersion, utcnow
from scheduler.client import Client, SourceFileError, image_ref_from_file
from scheduler.errors import ApiError, ClientError
from tests.pipeline import make_model_version
from tests.scheduler.conftest import Credentials
from workers.encoding import Provenance, encode_image


def _png(job_id: str, index: int, category: str = "a") -> bytes:
    """The file of image `index` of `job_id` as a job delivers it: pixels and catalogan's provenance."""
    provenance = Provenance("tiny@1", "0" * 64, job_id, index, 3, category, None)
    return encode_image(np.full((28, 28, 1), index, np.uint8), "png", provenance)


def _delivered(api: TestClient, pg_factory: sessionmaker[Session], tenant: Credentials, body: dict) -> str:
    """Submit a job, mark its images delivered (each row with its file's sha256, `_png`) and the job succeeded,
    as finished chunks and the finalize step would (workers are tested elsewhere)."""
    response = api.post("/v1/jobs", json={"seed": 3, **body}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    job_id = str(response.json()["id"])
    with transaction(pg_factory) as session:
        items = session.scalars(select(JobItem).where(JobItem.job_id == job_id)).all()

        def category(index: int) -> str:
            """A packed chunk spans several items: an index takes the category of the item it falls in."""
            return next(i.category for i in items if i.first_index <= index < i.first_index + i.count)

        for chunk in session.scalars(select(Chunk).where(Chunk.job_id == job_id)):
            session.add_all(
                Image(
                    job_id=job_id,
                    chunk_id=chunk.id,
                    index=index,
                    category=category(index),
                    status=ImageStatus.SUCCEEDED,
                    redraws=0,
                    attempt=1,
                    key=f"k/{index}",
                    sha256=hashlib.sha256(_png(job_id, index, category(index))).hexdigest(),
                )
                for index in range(chunk.start_index, chunk.stop_index)
            )
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.SUCCEEDED, finished_at=utcnow(), images_done=Job.images_total)
        )
    return job_id


def _set_job(pg_factory: sessionmaker[Session], job_id: str, **values: Any) -> None:
    with transaction(pg_factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def _jobs(pg_factory: sessionmaker[Session]) -> int:
    with pg_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_variations_and_interpolations_are_jobs_of_the_sources_category(
    api: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    model_version: Any,
    published: list,
) -> None:
    """Given a delivered job of category b / When variations and an interpolation of its images are
    submitted / Then each is a queued job of that category with its chunks published and its recipe stored."""
    source = _delivered(
        api, pg_factory, tenant, {"items": [{"category": "b", "count": 3}], "truncation": 0.8}
    )
    variation = {"source": {"job_id": source, "index": 1}, "strength": 0.4, "count": 5}
    response = api.post("/v1/jobs", json={"variation": variation, "chunk_size": 2}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["counts"]["images_total"], job["counts"]["chunks_total"]) == (5, 3)
    interpolation = {
        "start": {"job_id": source, "index": 0},
        "end": {"job_id": source, "index": 2},
        "frames": 4,
    }
    framed = api.post("/v1/jobs", json={"interpolation": interpolation}, headers=tenant.headers).json()
    assert framed["counts"]["images_total"] == 4
    with pg_factory() as session:
        stored = session.get(Job, job["id"])
        assert stored is not None
        assert stored.options["latent_control"]["truncation"] == 0.8  # inherited from the source
        items = session.scalars(select(JobItem.category).where(JobItem.job_id == framed["id"])).all()
    assert items == ["b"]
    assert len(published) == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [{"category": "a", "count": 1}], "truncation": 0.2}, "truncation"),
        ({"items": [{"category": "a", "count": 1}], "truncation": 1.5}, "truncation"),
        (
            {"variation": {"source": {"job_id": "x", "index": 0}, "strength": -0.1, "count": 1}},
            "variation.strength",
        ),
        (
            {"variation": {"source": {"job_id": "x", "index": 0}, "strength": 0.5, "count": 1}},
            "variation.source",
        ),
    ],
)
def test_bad_control_inputs_are_422s_naming_the_field(
    api: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    model_version: Any,
    body: dict,
    field: str,
) -> None:
    """Given ψ out of range, a strength out of range or an unknown source / When submitted / Then a 422 names
    the field and no job is created."""
    response = api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field
    assert _jobs(pg_factory) == 0


def test_another_tenants_image_and_two_model_versions_are_refused(
    api: TestClient,
    tenant: Credentials,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    model_version: Any,
) -> None:
    """Given images of tenant acme made by tiny@1 and tiny@2 / When another tenant asks for a variation of
    one, or acme interpolates across the versions / Then 422s name variation.source and interpolation.end, the
    first with the same answer as for an image that does not exist."""
    make_model_version(pg_factory, version=2)
    first = _delivered(api, pg_factory, tenant, {"model": "tiny@1", "items": [{"category": "a", "count": 1}]})
    second = _delivered(
        api, pg_factory, tenant, {"model": "tiny@2", "items": [{"category": "a", "count": 1}]}
    )
    other = make_tenant("other")
    variation = {"variation": {"source": {"job_id": first, "index": 0}, "strength": 0.5, "count": 2}}
    refused = api.post("/v1/jobs", json=variation, headers=other.headers)
    assert refused.status_code == 422
    error = refused.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("variation.source", "delivered_image")
    assert "of this tenant" in error["message"]
    ends = {"start": {"job_id": first, "index": 0}, "end": {"job_id": second, "index": 0}, "frames": 3}
    refused = api.post("/v1/jobs", json={"interpolation": ends}, headers=tenant.headers)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "interpolation.end"
    assert refused.json()["errors"][0]["rule"] == "same_model_version"
    assert _jobs(pg_factory) == 2


def test_the_sdk_submits_variations_and_interpolations(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given a delivered job / When the SDK asks for variations, frames and a ψ job, and for ψ 0.1 / Then
    the jobs are created with their image counts, and ψ 0.1 is an ApiError naming truncation."""
    source = _delivered(api, pg_factory, tenant, {"items": [{"category": "c", "count": 2}]})
    with Client("http://testserver", api_key=tenant.api_key, transport=api._transport) as client:
        varied = client.submit_variations(source, 1, count=3, strength=0.2, seed=5)
        framed = client.submit_interpolation((source, 0), (source, 1), frames=6)
        truncated = client.submit_job([{"category": "a", "count": 2}], truncation=0.5)
        with pytest.raises(ApiError) as caught:
            client.submit_job([{"category": "a", "count": 2}], truncation=0.1)
    assert (varied.images_total, framed.images_total, truncated.images_total) == (3, 6, 2)
    assert caught.value.status == 422 and "truncation" in str(caught.value)


def _variation(source: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"variation": {"source": source, "strength": 0.4, "count": 2}, **more}


def _interpolation(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    return {"interpolation": {"start": start, "end": end, "frames": 3}}


def _error(response: Any) -> tuple[str, str, str]:
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    return error["field"], error["rule"], error["message"]


@pytest.mark.parametrize(
    ("values", "rule"),
    [
        ({"expires_at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}, "not_expired"),
        ({"status": JobStatus.RUNNING, "finished_at": None}, "finished_job"),
        ({"status": JobStatus.CANCELLED}, "finished_job"),
    ],
    ids=["expired", "running", "cancelled"],
)
def test_an_image_of_an_expired_or_unfinished_job_is_refused_at_submit_and_estimate(
    api: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    model_version: Any,
    values: dict[str, Any],
    rule: str,
) -> None:
    """Given delivered images of a job that then expired (or runs again, or was cancelled) / When a variation of
    one, or an interpolation between two, is submitted or estimated / Then each is a 422 naming the source's
    field and the rule, and no job is created."""
    source = _delivered(api, pg_factory, tenant, {"items": [{"category": "a", "count": 2}]})
    _set_job(pg_factory, source, **values)
    bodies = [
        (_variation({"job_id": source, "index": 0}), "variation.source"),
        (
            _interpolation({"job_id": source, "index": 0}, {"job_id": source, "index": 1}),
            "interpolation.start",
        ),
    ]
    for body, field in bodies:
        for path in ("/v1/jobs", "/v1/jobs:estimate"):
            found, found_rule, message = _error(api.post(path, json=body, headers=tenant.headers))
            assert (found, found_rule) == (field, rule), (path, message)
            assert message.startswith(f"{field}: job {source}")
    assert _jobs(pg_factory) == 1


def test_another_tenants_image_as_an_interpolation_end_answers_as_a_missing_one(
    api: TestClient,
    tenant: Credentials,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    model_version: Any,
) -> None:
    """Given a delivered image of tenant acme and one of tenant other / When other interpolates from its own
    image to acme's (with acme's file sha256 too) / Then the 422 names `interpolation.end`, rule
    `delivered_image`, word for word as for an image that does not exist, and no job is created."""
    theirs = _delivered(api, pg_factory, tenant, {"items": [{"category": "a", "count": 1}]})
    other = make_tenant("other")
    ours = _delivered(api, pg_factory, other, {"items": [{"category": "a", "count": 1}]})
    sha256 = hashlib.sha256(_png(theirs, 0)).hexdigest()
    start = {"job_id": ours, "index": 0}
    refused = _error(
        api.post(
            "/v1/jobs",
            json=_interpolation(start, {"job_id": theirs, "index": 0, "sha256": sha256}),
            headers=other.headers,
        )
    )
    missing = _error(
        api.post(
            "/v1/jobs", json=_interpolation(start, {"job_id": "f" * 32, "index": 0}), headers=other.headers
        )
    )
    assert refused[:2] == missing[:2] == ("interpolation.end", "delivered_image")
    assert refused[2].replace(theirs, "J") == missing[2].replace("f" * 32, "J")
    assert _jobs(pg_factory) == 2


def test_estimate_refuses_a_source_of_another_or_a_retired_model_version_as_submit_does(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given an image made by tiny@1 and a tiny@2 registered / When variations are estimated and submitted naming
    tiny@2, then with tiny@1 retired and no model named / Then estimate answers each with submit's 422
    (`model`, `source_model_version`; then `model`, `not_retired`), and estimates what submit takes."""
    make_model_version(pg_factory, version=2)
    source = _delivered(
        api, pg_factory, tenant, {"model": "tiny@1", "items": [{"category": "b", "count": 1}]}
    )
    named = _variation({"job_id": source, "index": 0}, model="tiny@2")
    plain = _variation({"job_id": source, "index": 0})
    estimate = api.post("/v1/jobs:estimate", json=plain, headers=tenant.headers)
    assert estimate.status_code == 200, estimate.text
    assert (estimate.json()["images"], estimate.json()["model"]) == (2, {"name": "tiny", "version": 1})
    for path in ("/v1/jobs:estimate", "/v1/jobs"):
        assert _error(api.post(path, json=named, headers=tenant.headers))[:2] == (
            "model",
            "source_model_version",
        )
    with transaction(pg_factory) as session:
        session.execute(
            update(ModelVersion).where(ModelVersion.version == 1).values(status=ModelVersionStatus.RETIRED)
        )
    for path in ("/v1/jobs:estimate", "/v1/jobs"):
        assert _error(api.post(path, json=plain, headers=tenant.headers))[:2] == ("model", "not_retired")
    assert _jobs(pg_factory) == 1


def test_a_source_named_by_its_file_is_checked_against_the_recorded_sha256(
    api: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    model_version: Any,
    tmp_path: Path,
) -> None:
    """Given a delivered image and its file / When the SDK asks for variations naming the file (a Path), and the
    API is sent an edited copy's sha256, or one that is no sha256 / Then the file's job is made (its job id,
    index and sha256 read locally); the edited copy is a 422 on `variation.source.sha256` (rule
    `recorded_sha256`, and so for an interpolation end), the malformed one a 422 on the same field; no other
    job is created."""
    source = _delivered(api, pg_factory, tenant, {"items": [{"category": "c", "count": 2}]})
    path = tmp_path / "c.png"
    path.write_bytes(_png(source, 1, "c"))
    ref = image_ref_from_file(path)
    assert ref == {"job_id": source, "index": 1, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    with Client("http://testserver", api_key=tenant.api_key, transport=api._transport) as client:
        job = client.submit_variations(path, count=2, strength=0.3)
        framed = client.submit_interpolation((source, 0), path, frames=3)
        estimate = client.estimate_job(variation={"source": path, "strength": 0.3, "count": 4})
    assert (job.images_total, framed.images_total, estimate.images) == (2, 3, 4)
    assert job.variation == {"source": {"job_id": source, "index": 1}, "strength": 0.3, "count": 2}
    jobs_before = _jobs(pg_factory)
    edited = hashlib.sha256(path.read_bytes() + b"\0").hexdigest()
    refused = api.post("/v1/jobs", json=_variation({**ref, "sha256": edited}), headers=tenant.headers)
    assert _error(refused)[:2] == ("variation.source.sha256", "recorded_sha256")
    ends = _interpolation({"job_id": source, "index": 0}, {**ref, "sha256": edited})
    assert _error(api.post("/v1/jobs:estimate", json=ends, headers=tenant.headers))[:2] == (
        "interpolation.end.sha256",
        "recorded_sha256",
    )
    malformed = api.post("/v1/jobs", json=_variation({**ref, "sha256": "not-hex"}), headers=tenant.headers)
    assert _error(malformed)[0] == "variation.source.sha256"
    assert _jobs(pg_factory) == jobs_before


def test_the_sdk_refuses_a_file_that_names_no_image_before_sending(tmp_path: Path) -> None:
    """Given a file that is no PNG and a PNG over the size cap / When the SDK is asked for variations of them /
    Then `SourceFileError` (a ClientError) says why and nothing is sent (the client has no server)."""
    not_png = tmp_path / "x.png"
    not_png.write_bytes(b"GIF89a")
    big = tmp_path / "big.png"
    with big.open("wb") as handle:
        handle.truncate(64 << 20)
    with Client("http://127.0.0.1:9", api_key="cg_" + "a" * 40, max_retries=0) as client:
        for path, why in ((not_png, "not a PNG"), (big, "at most")):
            with pytest.raises(SourceFileError, match=why) as caught:
                client.submit_variations(path, count=2, strength=0.3)
            assert isinstance(caught.value, ClientError)
        with pytest.raises(ClientError, match="index"):
            client.submit_variations("j", count=2, strength=0.3)


def test_the_job_view_shows_each_jobs_creative_control(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given a ψ 0.8 job, a variation of one of its images and an interpolation between two / When each is
    read back with GET /v1/jobs/{id} and the SDK / Then each shows its ψ (the variation: its source's), its
    source and strength, its ends and frames; a plain job shows none."""
    source = _delivered(
        api, pg_factory, tenant, {"items": [{"category": "b", "count": 3}], "truncation": 0.8}
    )
    varied = api.post("/v1/jobs", json=_variation({"job_id": source, "index": 1}), headers=tenant.headers)
    ends = _interpolation({"job_id": source, "index": 0}, {"job_id": source, "index": 2})
    framed = api.post("/v1/jobs", json=ends, headers=tenant.headers)
    plain = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 1}]}, headers=tenant.headers)
    views = {
        name: api.get(f"/v1/jobs/{response.json()['id']}", headers=tenant.headers).json()
        for name, response in (
            ("source", api.get(f"/v1/jobs/{source}", headers=tenant.headers)),
            ("varied", varied),
            ("framed", framed),
            ("plain", plain),
        )
    }
    controls = {
        name: (view["truncation"], view["variation"], view["interpolation"]) for name, view in views.items()
    }
    assert controls["source"] == (0.8, None, None)
    assert controls["varied"] == (
        0.8,
        {"source": {"job_id": source, "index": 1}, "strength": 0.4, "count": 2},
        None,
    )
    assert controls["framed"] == (
        None,
        None,
        {"start": {"job_id": source, "index": 0}, "end": {"job_id": source, "index": 2}, "frames": 3},
    )
    assert controls["plain"] == (None, None, None)
    with Client("http://testserver", api_key=tenant.api_key, transport=api._transport) as client:
        job = client.get_job(views["framed"]["id"])
        listed = {j.id: j for j in client.list_jobs().jobs}
    assert job.interpolation == views["framed"]["interpolation"] and job.truncation is None
    assert listed[views["varied"]["id"]].variation == views["varied"]["variation"]
    assert listed[views["varied"]["id"]].truncation == 0.8
