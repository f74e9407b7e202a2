"""images.created_at index: fleet throughput (/metrics, estimates) reads the last hour of images

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 16:45:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the index."""
    op.create_index("ix_images_created_at", "images", ["created_at"], unique=False)


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_images_created_at", table_name="images")
