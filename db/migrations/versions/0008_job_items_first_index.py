"""job_items (job_id, first_index) index: a chunk packs consecutive small items, and the worker reads the
items of its index range (db.chunks.chunk_items)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 19:45:00

"""

from collections.abc import Sequence

from db.migrate import create_index_concurrently, drop_index_concurrently

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the index; on PostgreSQL CONCURRENTLY, so jobs keep being submitted while it builds."""
    create_index_concurrently("ix_job_items_job_id_first_index", "job_items", ["job_id", "first_index"])


def downgrade() -> None:
    """Drop the index."""
    drop_index_concurrently("ix_job_items_job_id_first_index", "job_items")
