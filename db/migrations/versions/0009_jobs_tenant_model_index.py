"""jobs (tenant_id, model_version_id) index: the console's jobs page lists the model versions a tenant has used
with one index probe per version instead of a pass over all of the tenant's jobs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:40:00

"""

from collections.abc import Sequence

from db.migrate import create_index_concurrently, drop_index_concurrently

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the index; on PostgreSQL CONCURRENTLY, so jobs keep being written while it builds."""
    create_index_concurrently("ix_jobs_tenant_id_model_version_id", "jobs", ["tenant_id", "model_version_id"])


def downgrade() -> None:
    """Drop the index."""
    drop_index_concurrently("ix_jobs_tenant_id_model_version_id", "jobs")
