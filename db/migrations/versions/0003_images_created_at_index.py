"""images.created_at index: fleet throughput (/metrics, estimates) reads the last hour of images

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 16:45:00

"""

from collections.abc import Sequence

from db.migrate import create_index_concurrently, drop_index_concurrently

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the index; on PostgreSQL CONCURRENTLY, so workers keep inserting images while it builds."""
    create_index_concurrently("ix_images_created_at", "images", ["created_at"])


def downgrade() -> None:
    """Drop the index."""
    drop_index_concurrently("ix_images_created_at", "images")
