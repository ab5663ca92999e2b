"""console indexes: batches by status, failed orders by reason, external_id across callers,
history by time, deliveries by order

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        # (batch_id, status) answers everything the single-column index did, and counts by status.
        batch_op.drop_index("ix_orders_batch_id")
        batch_op.create_index("ix_orders_batch_status", ["batch_id", "status"], unique=False)
        batch_op.create_index(
            "ix_orders_status_id", ["status", "id"], unique=False, postgresql_include=["reason"]
        )
        batch_op.create_index("ix_orders_external_id", ["external_id"], unique=False)
    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.create_index("ix_order_events_at", ["at"], unique=False)
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_deliveries_order_id", ["order_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_order_id")
    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.drop_index("ix_order_events_at")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_external_id")
        batch_op.drop_index("ix_orders_status_id")
        batch_op.drop_index("ix_orders_batch_status")
        batch_op.create_index("ix_orders_batch_id", ["batch_id"], unique=False)
