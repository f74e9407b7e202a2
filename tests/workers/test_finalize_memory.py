"""Finalize builds a job's manifests in temporary files, not in memory: no job's size sets a worker's memory.

A tenant may submit a job of a million images (the API's default cap); its JSONL manifest alone is about
300 MB. Finalize writes both manifests a batch of rows at a time into `spool()` files (in memory while small,
on disk beyond `MANIFEST_SPOOL_BYTES`) and the store uploads them a piece at a time (`put_file`)."""

from __future__ import annotations

import functools
import io
import json
import tracemalloc
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import insert, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.images import image_key, iter_image_fields
from db.status import ChunkStatus, ImageStatus, JobStatus
from db.storage import LocalStore
from db.tables import Chunk, Image, Job
from tests.db.factories import insert_job
from workers import finalize

IMAGES = 20_000
SKU = "S" * 120  # long SKUs and keys: rows of the size a catalog's make


class WatchedStore(LocalStore):
    """A local store noting, for each `put_file`, the key and whether the file had gone to disk."""

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store.root)
        self.files: dict[str, bool] = {}

    def put_file(self, key: str, file: BinaryIO, *, content_type: str = "application/octet-stream") -> None:
        self.files[key.rsplit("/", 1)[-1]] = bool(getattr(file, "_rolled", False))
        super().put_file(key, file, content_type=content_type)


def _finished_job(factory: sessionmaker[Session]) -> str:
    """A job of `IMAGES` images whose chunks have all succeeded (rows only; finalize reads only rows)."""
    rows = insert_job(factory, chunks=10, chunk_size=IMAGES // 10)
    with transaction(factory) as session:
        chunk_of = {n: chunk_id for n, chunk_id in enumerate(rows.chunk_ids)}
        session.execute(
            insert(Image),
            [
                {
                    "job_id": rows.job_id,
                    "chunk_id": chunk_of[index // (IMAGES // 10)],
                    "index": index,
                    "category": "Sneaker",
                    "sku": f"{SKU}{index}",
                    "key": image_key(rows.tenant_id, rows.job_id, "Sneaker", index, "png"),
                    "sha256": f"{index:064x}",
                    "status": ImageStatus.SUCCEEDED,
                    "score": 0.5,
                    "redraws": 0,
                    "attempt": 1,
                }
                for index in range(IMAGES)
            ],
        )
        session.execute(update(Chunk).where(Chunk.job_id == rows.job_id).values(status=ChunkStatus.SUCCEEDED))
        session.execute(update(Job).where(Job.id == rows.job_id).values(images_done=IMAGES))
    return rows.job_id


def test_finalize_spools_large_manifests_to_disk_and_holds_a_fraction_of_them(
    session_factory: sessionmaker[Session], local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a finished job of 20,000 images, and finalize's bounds made small for the test: pages of 200
    # rows from SQL, row groups of 200, manifests in memory up to 64 KiB, uploaded 64 KiB at a time
    monkeypatch.setattr(finalize, "iter_image_fields", functools.partial(iter_image_fields, batch_rows=200))
    monkeypatch.setattr(finalize, "MANIFEST_BATCH_ROWS", 200)
    monkeypatch.setattr(finalize, "MANIFEST_SPOOL_BYTES", 64 << 10)
    monkeypatch.setattr("db.storage.local.PUT_FILE_PIECE_BYTES", 64 << 10)
    job_id = _finished_job(session_factory)
    store = WatchedStore(local_store)
    # (what pyarrow imports on its first table, pandas among it, is not the manifests' memory)
    pa.Table.from_pylist([], schema=finalize.MANIFEST_COLUMNS).to_pandas()

    # When the job is finalized, with Python's allocations traced
    tracemalloc.start()
    try:
        status = finalize.finalize_job(session_factory, store, job_id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Then both manifests went to disk before their upload
    assert status is JobStatus.SUCCEEDED
    assert store.files == {"manifest.jsonl": True, "manifest.parquet": True}
    # And they are whole: every row, in index order, in each format
    with session_factory() as session:
        job = session.get_one(Job, job_id)
        jsonl_bytes = store.get(job.manifest_key or "")
    rows: list[dict[str, Any]] = [json.loads(line) for line in jsonl_bytes.splitlines()]
    assert [row["index"] for row in rows] == list(range(IMAGES))
    assert rows[7]["sku"] == f"{SKU}7" and rows[7]["status"] == "succeeded"
    parquet_key = (job.manifest_key or "").replace("manifest.jsonl", "manifest.parquet")
    table = pq.read_table(io.BytesIO(store.get(parquet_key)))
    assert table.num_rows == IMAGES and table.column("index").to_pylist() == list(range(IMAGES))
    # And at no point did finalize hold as much as a fifth of the JSONL manifest (building it in memory
    # held all of it, twice over when its bytes were taken out)
    assert peak < len(jsonl_bytes) / 5, f"peak {peak} bytes for a {len(jsonl_bytes)}-byte manifest"


def test_small_manifests_stay_in_memory(
    session_factory: sessionmaker[Session], local_store: LocalStore
) -> None:
    # Given a job of 8 images (manifests far below MANIFEST_SPOOL_BYTES)
    rows = insert_job(session_factory, chunks=2, chunk_size=4)
    with transaction(session_factory) as session:
        for index in range(8):
            session.add(
                Image(
                    job_id=rows.job_id,
                    chunk_id=rows.chunk_ids[index // 4],
                    index=index,
                    category="Sneaker",
                    status=ImageStatus.SUCCEEDED,
                    attempt=1,
                )
            )
        session.execute(update(Chunk).where(Chunk.job_id == rows.job_id).values(status=ChunkStatus.SUCCEEDED))
        session.execute(update(Job).where(Job.id == rows.job_id).values(images_done=8))
    store = WatchedStore(local_store)
    # When it is finalized, then no temporary file was written to disk for its manifests
    assert finalize.finalize_job(session_factory, store, rows.job_id) is JobStatus.SUCCEEDED
    assert store.files == {"manifest.jsonl": False, "manifest.parquet": False}
