"""Row locks are taken in one order everywhere, and the sweeper skips rows being written: on
PostgreSQL, workers racing each other and the sweeper over the same orders never deadlock."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from tests.helpers import add_orders, new_payload
from worker import repository as repo
from worker.db import transaction
from worker.ids import utcnow
from worker.models import Order
from worker.pipeline import sweeper
from worker.repository import Move
from worker.states import Status

S = Status


@pytest.mark.long
def test_workers_and_sweeper_racing_on_one_chunk_never_deadlock(clean_db, caller_id):
    """Two runs apply the same chunk's moves in opposite orders while the sweeper recovers the
    same expired leases, many times over: no DeadlockDetected, each order moved once."""
    if not clean_db.startswith("postgresql"):
        pytest.skip("row-level locking: PostgreSQL (SQLite serialises writers on the file)")
    errors: list[BaseException] = []
    for round_ in range(15):
        payloads = [new_payload(round_ * 1000 + i) for i in range(120)]
        ids = add_orders(clean_db, caller_id, payloads)
        past = utcnow() - timedelta(seconds=1)
        with transaction(clean_db) as session:
            session.execute(
                update(Order)
                .where(Order.id.in_(ids))
                .values(status="previewing", lease_owner="lease_a", due_at=past)
            )
        moves = [Move(i, S.PREVIEWING, S.RECEIVED, {"lease_owner": None}) for i in ids]
        barrier = threading.Barrier(3)

        def run(ordered: list[Move], barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                with transaction(clean_db) as session:
                    repo.apply_moves_bulk(
                        session, ordered, now=utcnow(), owner="lease_a", attempts={}, actor="w"
                    )
            except OperationalError as exc:
                errors.append(exc)

        def sweep(barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                with transaction(clean_db) as session:
                    sweeper.recover_expired_leases(session, now=utcnow(), limit=1000)
            except OperationalError as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(moves,)),
            threading.Thread(target=run, args=(moves[::-1],)),
            threading.Thread(target=sweep),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[0]
        with transaction(clean_db) as session:
            statuses = {o.status for o in repo.load(session, ids)}
            moved = sum(len(repo.history(session, i)) - 1 for i in ids)
        assert statuses == {"received"}
        assert moved == len(ids)  # each order moved exactly once, by one of the three
