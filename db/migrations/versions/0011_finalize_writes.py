"""finalize_writes: a finalize pass records itself before writing a job's manifests and deletes the row when it
finishes the job, so one that died between a stale write and its check is found and written over by the reaper

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 03:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the table and its job index."""
    op.create_table(
        "finalize_writes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_finalize_writes_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finalize_writes")),
    )
    with op.batch_alter_table("finalize_writes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_finalize_writes_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("finalize_writes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_finalize_writes_job_id"))
    op.drop_table("finalize_writes")
