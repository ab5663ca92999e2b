"""The sweeper: expired leases recovered with history; due orders taken once, even by two."""

from __future__ import annotations

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
