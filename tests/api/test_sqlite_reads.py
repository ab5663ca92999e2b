"""SQLite: reads never take the write lock, so a long write never blocks a GET (nor fails it).

Runs on a SQLite file of its own whatever ``ORDERS_DATABASE_URL`` says: the behaviour is
SQLite's locking.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from httpx import Response

from tests.api.conftest import make_caller, order
from worker import migrate


def test_get_answers_while_another_connection_holds_a_write_transaction(
    api: Callable[..., TestClient], tmp_path: Path
) -> None:
    """With a write transaction open elsewhere, an order, a list and a first-time key lookup
    all answer while it still holds its lock (before: each read began with BEGIN IMMEDIATE and
    waited up to 60 s, then answered 500)."""
    db_file = tmp_path / "reads.db"
    db_url = f"sqlite:///{db_file}"
    migrate.upgrade(db_url)
    alpha = make_caller(db_url, "alpha")
    beta = make_caller(db_url, "beta")
    client = api(database_url=db_url)
    created = client.post("/v1/orders", json=order("R-1"), headers=alpha.headers)
    assert created.status_code == 202
    order_id = created.json()["id"]
    reads: dict[str, Response] = {}

    def read_all() -> None:
        reads["view"] = client.get(f"/v1/orders/{order_id}", headers=alpha.headers)
        reads["page"] = client.get("/v1/orders", headers=alpha.headers)
        reads["events"] = client.get(f"/v1/orders/{order_id}/events", headers=alpha.headers)
        reads["hooks"] = client.get("/v1/webhook-endpoints", headers=alpha.headers)
        reads["first_use"] = client.get(f"/v1/orders/{order_id}", headers=beta.headers)

    writer = sqlite3.connect(db_file, isolation_level=None, timeout=1)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE orders SET reason = 'held by a writer'")
        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        # The writer holds its lock until the reads are done: a read that waited for it
        # would never finish here (the app's busy timeout is 60 s).
        reader.join(timeout=20)
        assert not reader.is_alive(), "the reads waited for the writer's lock"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    view, page, events = reads["view"], reads["page"], reads["events"]
    hooks, first_use = reads["hooks"], reads["first_use"]
    assert view.status_code == 200 and view.json()["reason"] is None  # the committed state
    assert page.status_code == 200 and [o["id"] for o in page.json()["items"]] == [order_id]
    assert events.status_code == 200 and hooks.status_code == 200
    assert first_use.status_code == 404
