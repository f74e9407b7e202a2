"""Image rows: deterministic keys, fenced bulk upserts, failed rows for quarantined chunks, manifest listing.

One row per (job, index), enforced by a unique constraint. Writes use INSERT ... ON CONFLICT DO UPDATE
(PostgreSQL and SQLite dialects), so a chunk that runs twice writes the same rows again, never a second row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from sqlalchemy import Insert, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.chunks import ChunkItem, Lease, assert_lease, renew_lease
from db.status import ImageStatus
from db.storage.keys import validate_key
from db.tables import Image, utcnow

# Rows per INSERT statement: SQLite allows 32,766 bound variables; 16 columns x 1,000 rows stays under.
UPSERT_BATCH_ROWS = 1000
LIST_BATCH_ROWS = 5000

CONTENT_TYPES = {"png": "image/png", "webp": "image/webp"}


def image_folder(category: str, sku: str | None) -> str:
    """The folder of an image under its job: the SKU when the item has one, else the category."""
    return sku if sku else category


def image_key(tenant_id: str, job_id: str, folder: str, index: int, output_format: str) -> str:
    """`<tenant>/jobs/<job_id>/<category-or-sku>/<index:08d>.<ext>`, validated."""
    return validate_key(f"{tenant_id}/jobs/{job_id}/{folder}/{index:08d}.{output_format}")


def manifest_keys(tenant_id: str, job_id: str) -> tuple[str, str]:
    """The JSONL and Parquet manifest keys of a job."""
    base = f"{tenant_id}/jobs/{job_id}/manifest"
    return validate_key(base + ".jsonl"), validate_key(base + ".parquet")


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What a worker knows about one finished image."""

    index: int
    category: str
    sku: str | None
    key: str | None  # None for a rejected image (no object is stored)
    sha256: str | None
    size_bytes: int | None
    width: int | None
    height: int | None
    status: ImageStatus = ImageStatus.SUCCEEDED  # or REJECTED by a quality gate
    score: float | None = None  # the quality gate's confidence for the requested category
    redraws: int = 0
    error: str | None = None  # why a rejected image was rejected

    @classmethod
    def rejected(
        cls,
        *,
        index: int,
        category: str,
        sku: str | None,
        score: float | None,
        redraws: int,
        error: str | None,
    ) -> ImageRecord:
        """A quality-gate rejection: a row without an object (no key, digest, size or dimensions)."""
        return cls(
            index=index,
            category=category,
            sku=sku,
            key=None,
            sha256=None,
            size_bytes=None,
            width=None,
            height=None,
            status=ImageStatus.REJECTED,
            score=score,
            redraws=redraws,
            error=error,
        )


@cache
def _upsert_statement(dialect: str, update_columns: tuple[str, ...]) -> Insert:
    """One INSERT ... ON CONFLICT (job_id, index) DO UPDATE per dialect and column set, built once.

    Executed with a list of parameter sets (executemany): the statement is compiled once and cached,
    where a multi-VALUES statement would be compiled anew for every batch of rows.
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = cast(Table, Image.__table__)
    statement = insert(table)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[table.c.job_id, table.c.index],
        set_={column: excluded[column] for column in update_columns},
    )


def _upsert(session: Session, rows: list[dict[str, Any]], update_columns: Sequence[str]) -> None:
    statement = _upsert_statement(session.get_bind().dialect.name, tuple(update_columns))
    connection = session.connection()
    for start in range(0, len(rows), UPSERT_BATCH_ROWS):
        connection.execute(statement, rows[start : start + UPSERT_BATCH_ROWS])


def upsert_images(
    session: Session,
    lease: Lease,
    records: Sequence[ImageRecord],
    *,
    now: dt.datetime | None = None,
    renew_seconds: float | None = None,
) -> Lease:
    """Write finished image rows (succeeded or rejected) for a chunk, fenced: `StaleAttemptError` if `lease` was lost.

    Runs in the caller's transaction. A row already there (a rerun) gets the same values again; its
    `created_at` stays as first written. With `renew_seconds`, the fencing UPDATE also extends the lease by
    that much (one statement for both); returns the lease as it now stands.
    """
    if renew_seconds is None:
        assert_lease(session, lease)
    else:
        lease = renew_lease(session, lease, lease_seconds=renew_seconds, now=now)
    if not records:
        return lease
    now = now or utcnow()
    rows = [
        {
            "job_id": lease.job_id,
            "chunk_id": lease.chunk_id,
            "index": record.index,
            "category": record.category,
            "sku": record.sku,
            "key": record.key,
            "sha256": record.sha256,
            "size_bytes": record.size_bytes,
            "width": record.width,
            "height": record.height,
            "status": record.status,
            "error": record.error,
            "score": record.score,
            "redraws": record.redraws,
            "attempt": lease.attempt,
            "created_at": now,
        }
        for record in records
    ]
    _upsert(
        session,
        rows,
        [
            "chunk_id",
            "key",
            "sha256",
            "size_bytes",
            "width",
            "height",
            "status",
            "error",
            "score",
            "redraws",
            "attempt",
        ],
    )
    return lease


def write_failed_images(
    session: Session,
    *,
    job_id: str,
    chunk_id: int,
    items: Sequence[ChunkItem],
    start: int,
    stop: int,
    attempt: int,
    error: str,
) -> None:
    """Mark every image of `[start, stop)` without a succeeded row as failed with `error` (quarantine).

    Images a previous attempt already finished keep their succeeded rows. `items` are the chunk's items
    (`db.chunks.chunk_items`): each row gets its own item's category and SKU.
    """
    succeeded = set(
        session.scalars(
            select(Image.index).where(
                Image.job_id == job_id,
                Image.index >= start,
                Image.index < stop,
                Image.status == ImageStatus.SUCCEEDED,
            )
        )
    )
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "chunk_id": chunk_id,
            "index": index,
            "category": item.category,
            "sku": item.sku,
            "key": None,
            "sha256": None,
            "size_bytes": None,
            "width": None,
            "height": None,
            "status": ImageStatus.FAILED,
            "error": error,
            "redraws": 0,
            "attempt": attempt,
            "created_at": now,
        }
        for item in items
        for index in range(max(start, item.start), min(stop, item.stop))
        if index not in succeeded
    ]
    if rows:
        _upsert(
            session, rows, ["status", "error", "attempt", "key", "sha256", "size_bytes", "width", "height"]
        )


def count_chunk_images(session: Session, job_id: str, start: int, stop: int, status: ImageStatus) -> int:
    """How many images of `[start, stop)` have a row with `status`."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Image)
            .where(Image.job_id == job_id, Image.index >= start, Image.index < stop, Image.status == status)
        )
        or 0
    )


def count_images(session: Session, job_id: str, status: ImageStatus | None = None) -> int:
    """How many image rows a job has (with `status`, when given)."""
    query = select(func.count()).select_from(Image).where(Image.job_id == job_id)
    if status is not None:
        query = query.where(Image.status == status)
    return int(session.scalar(query) or 0)


def _pages(session: Session, job_id: str, batch_rows: int, *columns: Any) -> Iterator[Sequence[Any]]:
    """Batches of a job's image rows in index order, keyset-paginated on `index` (the first column)."""
    last = -1
    while True:
        batch = session.execute(
            select(Image.index, *columns)
            .where(Image.job_id == job_id, Image.index > last)
            .order_by(Image.index)
            .limit(batch_rows)
        ).all()
        if not batch:
            return
        yield batch
        last = batch[-1][0]


def iter_job_images(session: Session, job_id: str, *, batch_rows: int = LIST_BATCH_ROWS) -> Iterator[Image]:
    """Every image row of a job in index order, read in keyset-paginated batches (for exports)."""
    for batch in _pages(session, job_id, batch_rows, Image):
        for _, image in batch:
            yield image


# Columns of `iter_image_fields`, in order (after `index`).
IMAGE_FIELDS = ("index", "sku", "category", "key", "sha256", "status", "error", "score", "redraws")


def iter_image_fields(
    session: Session, job_id: str, *, batch_rows: int = LIST_BATCH_ROWS
) -> Iterator[tuple[Any, ...]]:
    """Every image row of a job in index order as plain tuples of `IMAGE_FIELDS` (keyset-paginated).

    For manifests: no ORM objects are built, which made listing a large job several times slower.
    """
    columns = [getattr(Image, name) for name in IMAGE_FIELDS[1:]]
    for batch in _pages(session, job_id, batch_rows, *columns):
        for row in batch:
            yield tuple(row)
