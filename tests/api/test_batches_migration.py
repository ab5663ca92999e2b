"""Migration 0005_batches: batches created before it get a row, counts and an index order."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from tests.helpers import new_caller
from worker import migrate
from worker.batches import store as batch_store
from worker.db import get_engine, transaction
from worker.ids import new_id, utcnow


def test_existing_batches_are_backfilled(clean_db: str) -> None:
    caller = new_caller(clean_db, "old")
    migrate.downgrade(clean_db, "0004")
    try:
        running, done = new_id("bat"), new_id("bat")
        now = utcnow()
        rows = [
            (running, "received"),
            (running, "complete"),
            (running, "failed"),
            (done, "complete"),
            (done, "rejected"),
        ]
        with get_engine(clean_db).begin() as conn:
            for i, (batch_id, status) in enumerate(rows):
                conn.execute(
                    text(
                        "INSERT INTO orders (id, caller_id, batch_id, request_hash, order_type, "
                        "payload, status, attempts, failures, budget_from, created_at, "
                        "updated_at) VALUES (:id, :c, :b, 'h', 'new', '{}', :s, 0, 0, :t, :t, :t)"
                    ),
                    {
                        "id": new_id("ord"),
                        "c": caller,
                        "b": batch_id,
                        "s": status,
                        "t": (now + timedelta(seconds=i)).replace(tzinfo=None),
                    },
                )
    finally:
        migrate.upgrade(clean_db)
    with transaction(clean_db) as session:
        old = batch_store.find(session, running, caller)
        finished = batch_store.find(session, done, caller)
        assert old is not None and finished is not None
        assert (old.state, finished.state) == ("running", "completed")
        assert finished.notified == ["batch.completed"]  # no webhook for an old batch
        summaries = batch_store.summaries(session, [running, done], now=utcnow())
        for batch_id in (running, done):
            assert summaries[batch_id].counts == batch_store.count_orders(session, batch_id)
        indexes = session.execute(
            text("SELECT batch_index FROM orders WHERE batch_id = :b ORDER BY id"), {"b": running}
        ).scalars()
        assert list(indexes) == [0, 1, 2]
