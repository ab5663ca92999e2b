"""caller weight: each caller's share of the dispatch slots when the upstream is the limit

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("callers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weight", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("callers", schema=None) as batch_op:
        batch_op.drop_column("weight")
