"""`JobExport`: the export of `catalogan generate` follows the job chunk by chunk, then finishes the folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.images import image_key
from db.status import ChunkStatus, ImageStatus
from db.storage import ObjectStore
from db.tables import Chunk, Image, Job
from tests.db.factories import JobRows, insert_job
from workers.export import JobExport


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((28, 28), shade, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _finish_chunk(factory: sessionmaker[Session], store: ObjectStore, rows: JobRows, position: int) -> None:
    """What a worker leaves when a chunk completes: its objects, its rows and the chunk succeeded."""
    with transaction(factory) as session:
        chunk = session.get_one(Chunk, rows.chunk_ids[position])
        for index in range(chunk.start_index, chunk.stop_index):
            key = image_key(rows.tenant_id, rows.job_id, "Sneaker", index, "png")
            store.put(key, _png(index * 10))
            session.add(
                Image(
                    job_id=rows.job_id,
                    chunk_id=chunk.id,
                    index=index,
                    category="Sneaker",
                    key=key,
                    status=ImageStatus.SUCCEEDED,
                    attempt=1,
                )
            )
        session.execute(update(Chunk).where(Chunk.id == chunk.id).values(status=ChunkStatus.SUCCEEDED))


def test_the_export_copies_each_finished_chunk_while_the_job_runs(
    session_factory: sessionmaker[Session], memory_store: ObjectStore, tmp_path: Path
) -> None:
    # Given a running job of two chunks of 4 whose *second* chunk finished first
    rows = insert_job(session_factory, chunks=2, chunk_size=4)
    with session_factory() as session:
        export = JobExport(memory_store, session.get_one(Job, rows.job_id), tmp_path)
    _finish_chunk(session_factory, memory_store, rows, 1)
    # When the export is polled, then that chunk's 4 images are in the folder already, and only those
    with session_factory() as session:
        assert export.export_finished(session) == 4
        assert export.export_finished(session) == 0  # nothing is copied twice
    assert sorted(path.name for path in (tmp_path / "Sneaker").iterdir()) == [
        f"{i:08d}.png" for i in range(4, 8)
    ]
    # And when the first chunk finishes and the export finishes, every image is there, byte for byte
    _finish_chunk(session_factory, memory_store, rows, 0)
    with session_factory() as session:
        result = export.finish(session)
    assert result.images == 8
    for index in range(8):
        assert (tmp_path / "Sneaker" / f"{index:08d}.png").read_bytes() == _png(index * 10)
    # And the contact sheet shows the images in index order, not in the order the chunks finished
    sheet = PILImage.open(result.contact_sheets[0]).convert("L")
    tile = sheet.width // 8
    first_tile_shade = sheet.getpixel((2 + tile // 2, 2 + tile // 2))
    assert first_tile_shade == 0, "the first tile is image 0"
