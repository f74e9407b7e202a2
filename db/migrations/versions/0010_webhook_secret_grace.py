"""tenants.previous_webhook_secret(_until): a rotated webhook secret keeps signing, next to the new one, for a
grace period, so a receiver can switch over without refusing deliveries

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 01:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the two columns."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_webhook_secret", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("previous_webhook_secret_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("previous_webhook_secret_until")
        batch_op.drop_column("previous_webhook_secret")
