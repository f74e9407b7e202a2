"""Truncation, variations and interpolation over `POST /v1/jobs` and the SDK: jobs planned from delivered
images of the tenant, and 422s naming the field for everything else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.status import ImageStatus
from db.tables import Chunk, Image, Job, JobItem
from scheduler.client import Client
from scheduler.errors import ApiError
from tests.pipeline import make_model_version
from tests.scheduler.conftest import Credentials


def _delivered(api: TestClient, pg_factory: sessionmaker[Session], tenant: Credentials, body: dict) -> str:
    """Submit a job and mark its images delivered, as finished chunks would (workers are tested elsewhere)."""
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
                )
                for index in range(chunk.start_index, chunk.stop_index)
            )
    return job_id


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
