"""`GET /v1/jobs/{id}/manifest` streams JSONL and Parquet manifests from the object store (SeaweedFS S3) piece by
piece."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.images import manifest_keys
from db.status import JobStatus
from db.storage import ObjectStore
from db.storage.s3 import S3Store
from db.tables import ImageReview, Job, ReviewDecision
from scheduler.api.routes.images import MANIFEST_CHUNK_BYTES, PARQUET_BATCH_ROWS
from tests.scheduler.conftest import Credentials


class RecordingS3Store(S3Store):
    """The real S3 store, noting whole-object reads and the size of each streamed piece."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.whole_reads: list[str] = []
        self.pieces: list[int] = []

    def get(self, key: str) -> bytes:
        """Note the whole-object read, then do it."""
        self.whole_reads.append(key)
        return super().get(key)

    def iter_chunks(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Note each piece's size as it is read."""
        for piece in super().iter_chunks(key, chunk_bytes):
            self.pieces.append(len(piece))
            yield piece


@pytest.fixture
def api_store(s3_store: ObjectStore) -> RecordingS3Store:
    """The API's store: SeaweedFS through the recording S3 store."""
    return RecordingS3Store(s3_store.url)


def test_a_jsonl_manifest_is_streamed_from_s3_in_pieces_with_the_same_rows(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], api_store: RecordingS3Store
) -> None:
    """Given a finished job whose JSONL manifest in S3 is several times MANIFEST_CHUNK_BYTES, when the tenant
    downloads it, then every row comes back with its review column, the object is never read whole, and it
    is read in several pieces none larger than MANIFEST_CHUNK_BYTES."""
    created = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 1}]}, headers=tenant.headers)
    job_id = created.json()["id"]
    jsonl_key, _ = manifest_keys(tenant.tenant_id, job_id)
    rows: list[dict[str, Any]] = [
        {"index": i, "category": "a", "key": f"{tenant.tenant_id}/jobs/{job_id}/a/{i:08d}.png",
         "sha256": f"{i:064x}", "seed": 7, "status": "succeeded", "error": None, "sku": None}
        for i in range(4 * MANIFEST_CHUNK_BYTES // 200)
    ]  # fmt: skip
    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    assert len(data) > 3 * MANIFEST_CHUNK_BYTES
    api_store.put(jsonl_key, data)
    with transaction(pg_factory) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED, manifest_key=jsonl_key)
        )

    response = api.get(f"/v1/jobs/{job_id}/manifest", headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert [json.loads(line) for line in response.content.splitlines()] == [
        {**row, "review": "pending"} for row in rows
    ]
    assert api_store.whole_reads == []
    assert len(api_store.pieces) >= 4 and max(api_store.pieces) <= MANIFEST_CHUNK_BYTES


def test_a_parquet_manifest_is_rewritten_in_batches_from_s3_pieces_with_the_same_rows(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], api_store: RecordingS3Store
) -> None:
    """Given a finished job whose Parquet manifest in S3 has several row groups and is several times
    MANIFEST_CHUNK_BYTES, when the tenant downloads it, then every row comes back with its review column
    (a decision where one was made, pending otherwise, null for a failed image), and the stored object is
    read in pieces, never whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    created = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 1}]}, headers=tenant.headers)
    job_id = created.json()["id"]
    _, parquet_key = manifest_keys(tenant.tenant_id, job_id)
    count = 3 * PARQUET_BATCH_ROWS + 5
    rows: list[dict[str, Any]] = [
        {"index": i, "category": "a", "key": f"{tenant.tenant_id}/jobs/{job_id}/a/{i:08d}.png",
         "sha256": f"{i:064x}", "status": "failed" if i == 3 else "succeeded"}
        for i in range(count)
    ]  # fmt: skip
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out, compression="none", row_group_size=PARQUET_BATCH_ROWS)
    data = out.getvalue()
    assert len(data) > 3 * MANIFEST_CHUNK_BYTES
    api_store.put(parquet_key, data)
    with transaction(pg_factory) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED, manifest_key=parquet_key)
        )
        session.add(
            ImageReview(job_id=job_id, index=7, decision=ReviewDecision.REJECTED, reviewer_key_id="k")
        )

    response = api.get(f"/v1/jobs/{job_id}/manifest?format=parquet", headers=tenant.headers)

    assert response.status_code == 200, response.text
    served = pq.read_table(io.BytesIO(response.content)).to_pylist()
    expected_review = ["rejected" if i == 7 else None if i == 3 else "pending" for i in range(count)]
    assert served == [{**row, "review": review} for row, review in zip(rows, expected_review, strict=True)]
    assert api_store.whole_reads == []
    assert len(api_store.pieces) >= 4 and max(api_store.pieces) <= MANIFEST_CHUNK_BYTES
