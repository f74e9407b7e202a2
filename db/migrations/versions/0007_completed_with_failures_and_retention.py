"""Jobs: a `completed_with_failures` status (jobs.status widened to 32 characters) and jobs.retention_days
(the days a finished job is kept before the reaper deletes it)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 19:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = ("queued", "running", "succeeded", "failed", "cancelling", "cancelled")
_NEW_STATUS = "completed_with_failures"


def upgrade() -> None:
    """Widen jobs.status; add jobs.retention_days (existing jobs: None, kept until deleted)."""
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "status",
            existing_type=sa.Enum(*_STATUSES, name="jobstatus", native_enum=False, length=16),
            type_=sa.Enum(*_STATUSES, _NEW_STATUS, name="jobstatus", native_enum=False, length=32),
            existing_nullable=False,
        )
        batch.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop retention_days; a completed_with_failures job reads as failed again (its old meaning)."""
    op.execute(f"UPDATE jobs SET status = 'failed' WHERE status = '{_NEW_STATUS}'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retention_days")
        batch.alter_column(
            "status",
            existing_type=sa.Enum(*_STATUSES, _NEW_STATUS, name="jobstatus", native_enum=False, length=32),
            type_=sa.Enum(*_STATUSES, name="jobstatus", native_enum=False, length=16),
            existing_nullable=False,
        )
