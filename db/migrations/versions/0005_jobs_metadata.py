"""jobs.metadata: the client's bounded string labels of a job (db.job_specs.JobMetadata)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 17:35:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the column ({} for every existing job)."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("metadata", sa.JSON(), server_default=sa.text("'{}'"), nullable=False))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("metadata")
