"""Job lifecycle and cost: jobs.expires_at (retention), jobs.webhook_events (event filter), jobs.quota_cost
(generations a job may spend, redraws included), tenants.highest_queue (the queues a tenant may choose)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the columns; existing jobs never expire and cost their image count, tenants keep `bulk`."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("webhook_events", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("quota_cost", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
        # Not CONCURRENTLY (db.migrate.create_index_concurrently): the ADD COLUMNs above hold jobs' exclusive
        # lock until this migration commits, and the backfill below rewrites every row anyway; building the
        # index of a column that is all NULL adds little. A concurrent build would have to commit them first,
        # and a failure then could not be rerun.
        batch.create_index("ix_jobs_expires_at", ["expires_at"], unique=False)
    op.execute("UPDATE jobs SET quota_cost = images_total")
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("highest_queue", sa.String(length=16), server_default=sa.text("'bulk'"), nullable=False)
        )


def downgrade() -> None:
    """Drop the columns."""
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("highest_queue")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_expires_at")
        batch.drop_column("quota_cost")
        batch.drop_column("webhook_events")
        batch.drop_column("expires_at")
