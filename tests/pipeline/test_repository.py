"""Compare-and-set transitions: only the lease holder moves an order, one history row each."""

from __future__ import annotations

from datetime import timedelta

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


def test_bulk_moves_store_every_kind_of_value_as_the_orm_reads_it(clean_db, caller_id):
    """JSON, times, numbers, long text and NULLs of several moves in one group round-trip
    (PostgreSQL sends each column as one array; the values must come back unchanged)."""
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(3)])
    _lease(clean_db, ids, "lease_a")
    now = utcnow()
    later = now + timedelta(seconds=90)
    previews = [
        {"total": {"amount": 12.5, "currency": "GBP"}, "lines": [i, None]} for i in range(3)
    ]
    moves = [
        Move(
            oid,
            S.PREVIEWING,
            S.RECEIVED,
            {
                "preview": previews[i],
                "next_attempt_at": later if i else None,
                "failures": i,
                "lease_owner": None,
                "due_at": later,
            },
            reason="upstream_502" if i else None,
            message="é" * 3000 if i == 2 else None,
            status_code=502,
        )
        for i, oid in enumerate(ids)
    ]
    with transaction(clean_db) as session:
        events = repo.apply_moves_bulk(
            session, moves, now=now, owner="lease_a", attempts={i: 2 for i in ids}
        )
    assert [e["order_id"] for e in events] == sorted(ids)
    with transaction(clean_db) as session:
        orders = {o.id: o for o in repo.load(session, ids)}
        for i, oid in enumerate(ids):
            order = orders[oid]
            assert (order.status, order.lease_owner, order.failures) == ("received", None, i)
            assert order.preview == previews[i]
            assert order.next_attempt_at == (later if i else None)
            assert order.due_at == later and order.updated_at == now
            assert order.reason == ("upstream_502" if i else None)
        assert orders[ids[2]].message == "é" * 3000
        [last] = repo.history(session, ids[2])[-1:]
        assert (last.from_status, last.to_status, last.attempt) == ("previewing", "received", 2)
        assert (last.status_code, last.reason, last.at) == (502, "upstream_502", now)
        assert last.message == "é" * 2000
