"""chunks.retry_base: a retry gives a fresh attempt budget without resetting the fencing token

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:05:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the column (0 for every existing chunk)."""
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("retry_base", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("retry_base")
