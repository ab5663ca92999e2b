"""The sweeper: expired leases recovered with history; due orders taken once, even by two."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update

from tests.helpers import add_orders, new_payload
from worker.db import transaction
from worker.ids import utcnow
from worker.models import Order
from worker.pipeline import sweeper
from worker.repository import history, load


def _force(db_url: str, ids: list[str], **values) -> None:  # type: ignore[no-untyped-def]
    with transaction(db_url) as session:
        session.execute(update(Order).where(Order.id.in_(ids)).values(**values))


def test_expired_preview_lease_goes_back_to_received(clean_db, caller_id):
    """A worker that died while previewing: the order returns to received, recorded."""
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    past = utcnow() - timedelta(seconds=1)
    _force(clean_db, [oid], status="previewing", lease_owner="lease_dead", due_at=past)
    with transaction(clean_db) as session:
        assert sweeper.recover_expired_leases(session, now=utcnow(), limit=100) == 1
    with transaction(clean_db) as session:
        [order] = load(session, [oid])
        last = history(session, oid)[-1]
    assert (order.status, order.lease_owner) == ("received", None)
    assert (last.from_status, last.to_status, last.reason) == (
        "previewing",
        "received",
        "lease_expired",
    )


def test_expired_submit_lease_is_ambiguous_not_resubmitted(clean_db, caller_id):
    """A worker that died while submitting: the order becomes submit_unknown, never previewed."""
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    past = utcnow() - timedelta(seconds=1)
    _force(clean_db, [oid], status="submitting", lease_owner="lease_dead", due_at=past)
    with transaction(clean_db) as session:
        sweeper.recover_expired_leases(session, now=utcnow(), limit=100)
    with transaction(clean_db) as session:
        [order] = load(session, [oid])
    assert (order.status, order.reason) == ("submit_unknown", "worker_lost_during_submit")


def test_live_lease_is_left_alone(clean_db, caller_id):
    """A lease that has not expired is not broken."""
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    future = utcnow() + timedelta(seconds=60)
    _force(clean_db, [oid], status="submitting", lease_owner="lease_live", due_at=future)
    with transaction(clean_db) as session:
        assert sweeper.recover_expired_leases(session, now=utcnow(), limit=100) == 0


def test_due_orders_taken_once_by_concurrent_sweeps(clean_db, caller_id):
    """Two sweeps at once split the due orders between them; none is taken twice."""
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(200)], grace_s=0)
    results: list[list[str]] = []

    def sweep_once() -> None:
        with transaction(clean_db) as session:
            results.append(sweeper.take_due_orders(session, now=utcnow(), grace_s=30, limit=1000))

    threads = [threading.Thread(target=sweep_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = results[0] + results[1]
    assert sorted(taken) == sorted(ids)
    with transaction(clean_db) as session:
        assert sweeper.take_due_orders(session, now=utcnow(), grace_s=30, limit=1000) == []


def test_not_yet_due_and_terminal_orders_are_not_taken(clean_db, caller_id):
    """Orders within their grace period, held or terminal are not enqueued."""
    fresh = add_orders(clean_db, caller_id, [new_payload(1)], grace_s=60)
    done = add_orders(clean_db, caller_id, [new_payload(2)], grace_s=0)
    _force(clean_db, done, status="complete", due_at=None)
    with transaction(clean_db) as session:
        assert sweeper.take_due_orders(session, now=utcnow(), grace_s=30, limit=100) == []
    assert fresh
