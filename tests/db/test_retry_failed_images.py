"""A retry's cost is bounded in statements, not in chunks: the failed rows of every quarantined chunk go in one
DELETE, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import quarantine_chunk, retry_failed_images
from db.engine import transaction
from db.status import ImageStatus, JobStatus
from db.tables import Chunk, Image
from tests.db.factories import insert_job


def _image(job_id: str, chunk_id: int, index: int, status: ImageStatus) -> Image:
    return Image(job_id=job_id, chunk_id=chunk_id, index=index, category="Sneaker", status=status, attempt=1)


def test_a_retry_deletes_the_failed_rows_of_all_its_chunks_in_one_statement(
    session_factory: sessionmaker[Session],
) -> None:
    # Given a job of 30 chunks of 2 images: chunks 0-19 quarantined, each with one failed and one succeeded
    # image; chunk 20 finished with a failed image of its own (not quarantined: it is not retried)
    rows = insert_job(session_factory, chunks=30, chunk_size=2, status=JobStatus.RUNNING)
    with transaction(session_factory) as session:
        for n, chunk_id in enumerate(rows.chunk_ids[:21]):
            session.add(_image(rows.job_id, chunk_id, 2 * n, ImageStatus.FAILED))
            session.add(_image(rows.job_id, chunk_id, 2 * n + 1, ImageStatus.SUCCEEDED))
        for chunk_id in rows.chunk_ids[:20]:
            quarantine_chunk(session, chunk_id, error="CUDA out of memory")
    statements: list[str] = []
    engine = session_factory.kw["bind"]

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        # When the job is retried
        with transaction(session_factory) as session:
            plan = retry_failed_images(session, rows.job_id, tenant_id=rows.tenant_id)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # Then one DELETE removed the 20 retried chunks' failed rows (before: 20 DELETEs, one per chunk)
    assert sorted(plan.chunk_ids) == sorted(rows.chunk_ids[:20])
    assert len([s for s in statements if s.lstrip().upper().startswith("DELETE FROM IMAGES")]) == 1
    with session_factory() as session:
        left = session.execute(select(Image.index, Image.status).order_by(Image.index)).all()
        pending = session.scalars(select(Chunk.id).where(Chunk.status == "pending")).all()
    # and the succeeded rows stay, as does the failed row of the chunk that was not quarantined
    assert [index for index, _ in left] == [*range(1, 40, 2), 40, 41]
    assert {status for index, status in left if index < 40} == {ImageStatus.SUCCEEDED}
    assert set(rows.chunk_ids[:20]) <= set(pending)
