"""`POST /v1/jobs` with `client_item_id`s: a resubmitted catalog manifest skips what was already delivered."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.status import ImageStatus
from db.tables import Chunk, Image
from tests.scheduler.conftest import Credentials


def _csv(skus: range) -> bytes:
    rows = "".join(f"SKU-{n},{'abc'[n % 3]},2,SKU-{n}/front\n" for n in skus)
    return f"sku,category,count,client_item_id\n{rows}".encode()


def _upload(api: TestClient, tenant: Credentials, skus: range) -> dict:
    response = api.post(
        "/v1/jobs",
        files={"file": ("catalog.csv", _csv(skus), "text/csv")},
        data={"spec": json.dumps({"seed": 11, "chunk_size": 4})},
        headers=tenant.headers,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _deliver(pg_factory: sessionmaker[Session], job_id: str) -> None:
    """Record every image of a job as delivered (what the workers write once they uploaded them)."""
    with transaction(pg_factory) as session:
        for chunk in session.scalars(select(Chunk).where(Chunk.job_id == job_id)):
            for index in range(chunk.start_index, chunk.stop_index):
                session.add(
                    Image(
                        job_id=job_id,
                        chunk_id=chunk.id,
                        index=index,
                        category="a",
                        key=f"k/{index}",
                        sha256="0" * 64,
                        status=ImageStatus.SUCCEEDED,
                        attempt=1,
                    )
                )


def test_a_resubmitted_manifest_reports_and_skips_the_delivered_items(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], published: list
) -> None:
    # Given a catalog of 8 SKUs (2 images each) submitted and delivered
    first = _upload(api, tenant, range(8))
    _deliver(pg_factory, first["id"])
    # When the catalog comes back with 2 new SKUs, same seed
    second = _upload(api, tenant, range(10))
    # Then the response says 8 items (16 images) were skipped and only 4 images are planned and published
    # (the two new 2-image items share one chunk: small items are packed)
    counts = second["counts"]
    assert (counts["items_skipped_existing"], counts["images_skipped_existing"]) == (8, 16)
    assert (counts["images_total"], counts["chunks_total"]) == (4, 1)
    assert published[-1][1] and len(published[-1][1]) == 1
    # And showing and listing the job report the same counts
    shown = api.get(f"/v1/jobs/{second['id']}", headers=tenant.headers).json()
    assert shown["counts"] == counts
    listed = {job["id"]: job for job in api.get("/v1/jobs", headers=tenant.headers).json()["data"]}
    assert listed[second["id"]]["counts"] == counts
    assert listed[first["id"]]["counts"]["items_skipped_existing"] == 0
