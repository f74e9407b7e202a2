"""jobs (tenant_id, model_version_id) index: the console's jobs page lists the model versions a tenant has used
with one index probe per version instead of a pass over all of the tenant's jobs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:40:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the index."""
    op.create_index(
        "ix_jobs_tenant_id_model_version_id", "jobs", ["tenant_id", "model_version_id"], unique=False
    )


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_jobs_tenant_id_model_version_id", table_name="jobs")
