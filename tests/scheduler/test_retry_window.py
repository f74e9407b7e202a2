"""`POST /v1/jobs/{id}/retry` keeps the per-tenant publish window (`db.publish_window`): retried chunks go back
to held and are published as the window has room, like a submit's, never all at once. TestClient on real
PostgreSQL with a recording publisher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import quarantine_chunk
from db.engine import transaction
from db.jobs import mark_job_running
from db.publish_window import in_flight
from db.status import ChunkStatus, JobStatus
from db.tables import Chunk, Job
from tests.scheduler.conftest import Credentials

WINDOW = 2


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish window of 2 chunks per tenant and queue."""
    monkeypatch.setenv("CATALOGAN_PUBLISH_WINDOW_CHUNKS", str(WINDOW))


def _submit(
    api: TestClient, tenant: Credentials, factory: sessionmaker[Session], chunks: int
) -> tuple[str, list[int]]:
    """A job of `chunks` chunks of 16 images; its id and chunk ids in order."""
    body = {"items": [{"category": "a", "count": 16 * chunks}], "chunk_size": 16, "seed": 3}
    response = api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    job_id = str(response.json()["id"])
    with factory() as session:
        ids = session.scalars(select(Chunk.id).where(Chunk.job_id == job_id).order_by(Chunk.id))
        return job_id, list(ids)


def _held(factory: sessionmaker[Session], job_id: str) -> int:
    with factory() as session:
        query = select(func.count()).where(
            Chunk.job_id == job_id, Chunk.status == ChunkStatus.PENDING, Chunk.enqueued_at.is_(None)
        )
        return int(session.scalar(query) or 0)


def _sent(published: Sequence[tuple[str, tuple[int, ...]]]) -> list[int]:
    return [chunk_id for _, ids in published for chunk_id in ids]


def test_a_retry_of_a_running_job_keeps_its_held_chunks_held(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], published: list[Any]
) -> None:
    # Given a window of 2 and a running 50-chunk job: 2 chunks published, 48 held; one published chunk quarantined
    job_id, chunk_ids = _submit(api, tenant, pg_factory, 50)
    assert _sent(published) == chunk_ids[:WINDOW]
    with transaction(pg_factory) as session:
        mark_job_running(session, job_id)
        quarantine_chunk(session, chunk_ids[0], error="boom")
    published.clear()

    # When the tenant retries the failed images
    response = api.post(f"/v1/jobs/{job_id}/retry", headers=tenant.headers)

    # Then the retried chunk is published (the window had room for one), nothing else is marked published,
    # and the 48 chunks held before the retry are held still
    assert response.status_code == 202, response.text
    assert _sent(published) == [chunk_ids[0]]
    with pg_factory() as session:
        assert in_flight(session, tenant.tenant_id, "bulk") == WINDOW
    assert _held(pg_factory, job_id) == 48


def test_a_retry_of_a_big_failed_job_publishes_at_most_the_window(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], published: list[Any]
) -> None:
    # Given a window of 2 and a failed 40-chunk job whose every chunk was quarantined
    job_id, chunk_ids = _submit(api, tenant, pg_factory, 40)
    with transaction(pg_factory) as session:
        for chunk_id in chunk_ids:
            quarantine_chunk(session, chunk_id, error="boom")
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.FAILED))
    published.clear()

    # When the tenant retries it
    response = api.post(f"/v1/jobs/{job_id}/retry", headers=tenant.headers)

    # Then the job is queued again with its 2 oldest chunks published and the other 38 held for the refill
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    assert _sent(published) == chunk_ids[:WINDOW]
    with pg_factory() as session:
        assert in_flight(session, tenant.tenant_id, "bulk") == WINDOW
    assert _held(pg_factory, job_id) == 40 - WINDOW
