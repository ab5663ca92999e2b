"""batches: a row per batch, counts by status kept by triggers in each transition's transaction

Revision ID: 0005_batches
Revises: 0005_console_session_generation
Create Date: 2026-12-04 12:40:00

Counts live in ``batch_counts`` (one row per batch, status and writer) and are changed by
triggers on ``orders`` (status changes, deletes), so every path that moves an order
(pipeline, sweeper, operator, retention) keeps them in its own transaction; intake counts
the orders it inserts in its transaction. On PostgreSQL the writer is the backend pid: two
transactions at once never touch the same counts row (no hot row, no lock wait, no
deadlock), and a read sums a handful of rows. Existing batches are backfilled here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_batches"
down_revision = "0005_console_session_generation"
branch_labels = None
depends_on = None

FINAL = "('complete', 'rejected', 'failed', 'cancelled')"
BUCKET_S = 5

_PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION orders_batch_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  writer integer := pg_backend_pid();
BEGIN
  INSERT INTO batch_counts AS c (batch_id, status, shard, n)
  VALUES (OLD.batch_id, OLD.status, writer, -1)
  ON CONFLICT (batch_id, status, shard) DO UPDATE SET n = c.n - 1;
  IF TG_OP = 'UPDATE' THEN
    INSERT INTO batch_counts AS c (batch_id, status, shard, n, first_at, last_at)
    VALUES (NEW.batch_id, NEW.status, writer, 1, NEW.updated_at, NEW.updated_at)
    ON CONFLICT (batch_id, status, shard) DO UPDATE SET n = c.n + 1,
      first_at = LEAST(c.first_at, excluded.first_at),
      last_at = GREATEST(c.last_at, excluded.last_at);
    IF NEW.status IN {FINAL} THEN
      INSERT INTO batch_finals AS f (batch_id, bucket, shard, n)
      VALUES (NEW.batch_id, floor(extract(epoch FROM NEW.updated_at) / {BUCKET_S})::bigint,
              writer, 1)
      ON CONFLICT (batch_id, bucket, shard) DO UPDATE SET n = f.n + 1;
    END IF;
  END IF;
  RETURN NULL;
END $$;
"""

# Row triggers that fire only on a status change of a batch's order (the WHEN clause keeps
# lease renewals and orders outside batches free). Inserts are counted by intake itself
# (worker.intake.store.create_orders: one row for the whole insert, not one per order).
_PG_TRIGGERS = [
    "CREATE TRIGGER orders_batch_counts_upd AFTER UPDATE OF status ON orders FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.batch_id IS NOT NULL) "
    "EXECUTE FUNCTION orders_batch_counts()",
    "CREATE TRIGGER orders_batch_counts_del AFTER DELETE ON orders FOR EACH ROW "
    "WHEN (OLD.batch_id IS NOT NULL) EXECUTE FUNCTION orders_batch_counts()",
]

_SQLITE_ADD = """
INSERT INTO batch_counts (batch_id, status, shard, n, first_at, last_at)
VALUES (NEW.batch_id, NEW.status, 0, 1, NEW.updated_at, NEW.updated_at)
ON CONFLICT (batch_id, status, shard) DO UPDATE SET n = n + 1,
  first_at = min(coalesce(first_at, excluded.first_at), excluded.first_at),
  last_at = max(coalesce(last_at, excluded.last_at), excluded.last_at);
"""
_SQLITE_REMOVE = """
INSERT INTO batch_counts (batch_id, status, shard, n) VALUES (OLD.batch_id, OLD.status, 0, -1)
ON CONFLICT (batch_id, status, shard) DO UPDATE SET n = n - 1;
"""
_SQLITE_FINAL = f"""
INSERT INTO batch_finals (batch_id, bucket, shard, n)
SELECT NEW.batch_id, CAST(strftime('%s', NEW.updated_at) AS INTEGER) / {BUCKET_S}, 0, 1
WHERE NEW.status IN {FINAL}
ON CONFLICT (batch_id, bucket, shard) DO UPDATE SET n = n + 1;
"""
# SQLite writes one transaction at a time: one counts row per batch and status (shard 0).
_SQLITE_TRIGGERS = [
    "CREATE TRIGGER orders_batch_counts_upd AFTER UPDATE OF status ON orders "
    "WHEN NEW.batch_id IS NOT NULL AND OLD.status IS NOT NEW.status "
    f"BEGIN {_SQLITE_REMOVE} {_SQLITE_ADD} {_SQLITE_FINAL} END",
    "CREATE TRIGGER orders_batch_counts_del AFTER DELETE ON orders "
    f"WHEN OLD.batch_id IS NOT NULL BEGIN {_SQLITE_REMOVE} END",
]


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    json = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("caller_id", sa.String(40), sa.ForeignKey("callers.id"), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("mode", sa.String(20), nullable=False, server_default="run"),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_at", _utc(), nullable=False),
        sa.Column("halt_on", json, nullable=True),
        sa.Column("halt", json, nullable=True),
        sa.Column("totals", json, nullable=True),
        sa.Column("completed_at", _utc(), nullable=True),
        sa.Column("notified", json, nullable=True),
    )
    op.create_index("ix_batches_caller_id_id", "batches", ["caller_id", "id"])
    op.create_index("ix_batches_state", "batches", ["state"])
    op.create_table(
        "batch_counts",
        sa.Column("batch_id", sa.String(40), primary_key=True),
        sa.Column("status", sa.String(20), primary_key=True),
        sa.Column("shard", sa.Integer(), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("first_at", _utc(), nullable=True),
        sa.Column("last_at", _utc(), nullable=True),
    )
    op.create_table(
        "batch_finals",
        sa.Column("batch_id", sa.String(40), primary_key=True),
        sa.Column("bucket", sa.BigInteger(), primary_key=True),
        sa.Column("shard", sa.Integer(), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "batch_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("batch_id", sa.String(40), nullable=False, index=True),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("from_state", sa.String(20), nullable=True),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("detail", json, nullable=True),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_index", sa.Integer(), nullable=True))
    op.create_index("ix_orders_batch_index", "orders", ["batch_id", "batch_index"])

    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        op.execute(_PG_FUNCTION)
        for statement in _PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
    _backfill(postgres)


def _backfill(postgres: bool) -> None:
    """Batches created before this revision: a row, counts, and an index by id order.

    A batch whose orders are all final is ``completed`` and marked notified: no webhook goes
    out for a batch that ended before batch events existed.
    """
    op.execute(
        "UPDATE orders SET batch_index = (SELECT count(*) FROM orders o2 "
        "WHERE o2.batch_id = orders.batch_id AND o2.id < orders.id) "
        "WHERE batch_id IS NOT NULL"
        if not postgres
        else "UPDATE orders SET batch_index = r.i FROM (SELECT id, row_number() OVER "
        "(PARTITION BY batch_id ORDER BY id) - 1 AS i FROM orders WHERE batch_id IS NOT NULL) r "
        "WHERE orders.id = r.id"
    )
    op.execute(
        "INSERT INTO batch_counts (batch_id, status, shard, n, first_at, last_at) "
        "SELECT batch_id, status, 0, count(*), min(updated_at), max(updated_at) FROM orders "
        "WHERE batch_id IS NOT NULL GROUP BY batch_id, status "
        "ON CONFLICT (batch_id, status, shard) DO NOTHING"
    )
    done = f"sum(CASE WHEN status IN {FINAL} THEN 0 ELSE 1 END) = 0"
    notified = """'["batch.completed"]'"""
    if postgres:
        notified = f"CAST({notified} AS jsonb)"
    op.execute(
        "INSERT INTO batches (id, caller_id, created_at, mode, state, state_at, completed_at, "
        "notified) "
        "SELECT batch_id, min(caller_id), min(created_at), 'run', "
        f"CASE WHEN {done} THEN 'completed' ELSE 'running' END, max(updated_at), "
        f"CASE WHEN {done} THEN max(updated_at) END, CASE WHEN {done} THEN {notified} END "
        "FROM orders WHERE batch_id IS NOT NULL GROUP BY batch_id"
    )


def downgrade() -> None:
    bind = op.get_bind()
    for name in ("upd", "del"):
        if bind.dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS orders_batch_counts_{name} ON orders")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS orders_batch_counts_{name}")
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS orders_batch_counts()")
    op.drop_index("ix_orders_batch_index", table_name="orders")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("batch_index")
    op.drop_table("batch_events")
    op.drop_table("batch_finals")
    op.drop_table("batch_counts")
    op.drop_index("ix_batches_state", table_name="batches")
    op.drop_index("ix_batches_caller_id_id", table_name="batches")
    op.drop_table("batches")
