"""Compare-and-set transitions: only the lease holder moves an order, one history row each."""

from __future__ import annotations

from sqlalchemy import update

from tests.helpers import add_orders, new_payload
from worker import repository as repo
from worker.db import transaction
from worker.ids import utcnow
from worker.models import Order
from worker.repository import Move
from worker.states import Status

S = Status


def _lease(db_url: str, ids: list[str], owner: str) -> None:
    with transaction(db_url) as session:
        session.execute(
            update(Order).where(Order.id.in_(ids)).values(status="previewing", lease_owner=owner)
        )


def test_bulk_moves_skip_orders_whose_lease_was_lost(clean_db, caller_id):
    """Of three orders, the one leased to another worker is not moved and gets no history."""
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(3)])
    _lease(clean_db, ids, "lease_a")
    _lease(clean_db, ids[1:2], "lease_b")
    moves = [Move(i, S.PREVIEWING, S.PREVIEWED, {"preview": {"n": 1}}) for i in ids]
    with transaction(clean_db) as session:
        events = repo.apply_moves_bulk(
            session, moves, now=utcnow(), owner="lease_a", attempts={i: 1 for i in ids}
        )
    assert sorted(e["order_id"] for e in events) == sorted([ids[0], ids[2]])
    with transaction(clean_db) as session:
        orders = {o.id: o for o in repo.load(session, ids)}
        assert orders[ids[1]].status == "previewing" and orders[ids[1]].preview is None
        assert orders[ids[0]].status == "previewed" and orders[ids[0]].preview == {"n": 1}
        assert [e.to_status for e in repo.history(session, ids[1])] == ["received"]


def test_via_move_writes_two_history_rows(clean_db, caller_id):
    """previewing -> submitting via previewed is one update and two history rows."""
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    _lease(clean_db, [oid], "lease_a")
    move = Move(oid, S.PREVIEWING, S.SUBMITTING, {"preview": {}}, via=S.PREVIEWED)
    with transaction(clean_db) as session:
        repo.apply_moves_bulk(session, [move], now=utcnow(), owner="lease_a", attempts={oid: 1})
    with transaction(clean_db) as session:
        steps = [(e.from_status, e.to_status) for e in repo.history(session, oid)]
    assert steps[-2:] == [("previewing", "previewed"), ("previewed", "submitting")]


def test_same_move_twice_only_wins_once(clean_db, caller_id):
    """Replaying a move (a duplicate message) changes nothing the second time."""
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    move = Move(oid, S.RECEIVED, S.CANCELLED, {"due_at": None})
    with transaction(clean_db) as session:
        assert repo.apply_moves(session, [move], now=utcnow(), owner=None)
    with transaction(clean_db) as session:
        assert repo.apply_moves(session, [move], now=utcnow(), owner=None) == []
