"""Ambiguous submits never lead to a blind re-submit (invariant 2)."""

from __future__ import annotations

from tests.helpers import add_orders, new_payload
from tests.pipeline.conftest import drive
from worker.db import transaction
from worker.repository import history


def _reasons(db_url: str, oid: str) -> list[tuple[str, str | None]]:
    with transaction(db_url) as session:
        return [(e.to_status, e.reason) for e in history(session, oid)]


def test_ambiguous_submit_is_found_upstream_not_resubmitted(
    runtime_factory, caller_id, stub, clean_db
):
    """The stub creates the order then never answers: we find it by external_id, once."""
    rt = runtime_factory(upstream_read_timeout_s=0.5)
    stub.configure(ambiguous_hold_s=3)
    stub.script("submit", [{"kind": "ambiguous", "times": 1}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    order = drive(rt, [oid])[oid]
    assert order.status == "complete"
    steps = _reasons(clean_db, oid)
    assert ("submit_unknown", "submit_timeout") in steps
    assert steps[-1] == ("complete", "reconciled")
    record = stub.orders()
    assert record["count"] == 1 and not record["duplicates"]
    assert order.upstream_id == record["orders"][0]["id"]


def test_ambiguous_without_external_id_uses_our_id(runtime_factory, caller_id, stub, clean_db):
    """An order sent without external_id carries our id upstream, so it can still be found."""
    rt = runtime_factory(upstream_read_timeout_s=0.5)
    stub.configure(ambiguous_hold_s=3)
    stub.script("submit", [{"kind": "ambiguous", "times": 1}])
    payload = new_payload(1)
    del payload["external_id"]
    [oid] = add_orders(clean_db, caller_id, [payload])
    order = drive(rt, [oid])[oid]
    assert order.status == "complete"
    assert [o["external_id"] for o in stub.orders()["orders"]] == [oid]


def test_unknown_not_found_is_held_for_operator(runtime_factory, caller_id, stub, clean_db):
    """A submit that timed out and left nothing upstream is held, not re-sent (policy hold)."""
    rt = runtime_factory(upstream_read_timeout_s=0.5)
    stub.configure(ambiguous_hold_s=3)
    stub.script("submit", [{"kind": "timeout", "times": 1}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    order = drive(rt, [oid])[oid]
    assert (order.status, order.reason, order.due_at) == (
        "submit_unknown",
        "held_for_operator",
        None,
    )
    assert stub.orders()["count"] == 0
    rt.pipeline.run([oid])  # a stray message changes nothing
    assert drive(rt, [oid])[oid].reason == "held_for_operator"


def test_resubmit_policy_resubmits_when_not_found(runtime_factory, caller_id, stub, clean_db):
    """With ORDERS_SUBMIT_UNKNOWN_POLICY=resubmit the decision is recorded and the order sent."""
    rt = runtime_factory(upstream_read_timeout_s=0.5, submit_unknown_policy="resubmit")
    stub.configure(ambiguous_hold_s=3)
    stub.script("submit", [{"kind": "timeout", "times": 1}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    order = drive(rt, [oid])[oid]
    assert order.status == "complete"
    assert ("previewed", "policy_resubmit") in _reasons(clean_db, oid)
    assert stub.orders()["count"] == 1


def test_upstream_without_a_list_holds_instead_of_guessing(
    runtime_factory, caller_id, stub, clean_db
):
    """If the order list cannot be read (404), the ambiguous order is held, not re-sent."""
    rt = runtime_factory(upstream_read_timeout_s=0.5)
    stub.configure(ambiguous_hold_s=3)
    stub.script("submit", [{"kind": "ambiguous", "times": 1}])
    stub.script("list", [{"status": 404, "times": 5}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    order = drive(rt, [oid])[oid]
    assert (order.status, order.reason) == ("submit_unknown", "held_for_operator")
    assert stub.orders()["count"] == 1


def _unknown(db_url: str, ids: list[str], **values: object) -> None:
    from sqlalchemy import update

    from worker.ids import utcnow
    from worker.models import Order

    with transaction(db_url) as session:
        session.execute(
            update(Order)
            .where(Order.id.in_(ids))
            .values(status="submit_unknown", due_at=utcnow(), lease_owner=None, **values)
        )


def test_another_callers_order_is_never_taken_for_ours(runtime_factory, caller_id, stub, clean_db):
    """B's submit was lost; A (another caller) has an upstream order with the same
    external_id. B must not be marked complete with A's upstream order: it is held."""
    from tests.helpers import new_caller

    rt = runtime_factory()
    [a] = add_orders(clean_db, caller_id, [new_payload(7)])
    a_order = drive(rt, [a])[a]
    assert a_order.status == "complete" and a_order.upstream_id
    other = new_caller(clean_db, "other")
    [b] = add_orders(clean_db, other, [new_payload(7)])  # same external_id EXT-7
    _unknown(clean_db, [b])
    b_order = drive(rt, [b])[b]
    assert b_order.status == "submit_unknown" and b_order.due_at is None
    assert b_order.upstream_id is None
    assert (b_order.reason, stub.orders()["count"]) == ("held_for_operator", 1)


def test_two_untied_orders_sharing_an_external_id_are_both_held(
    runtime_factory, caller_id, stub, clean_db
):
    """Two callers' ambiguous submits carry one external_id and the upstream has one such
    order: which one it is cannot be told, so both are held (none is dropped or guessed)."""
    from tests.helpers import new_caller

    rt = runtime_factory()
    [a] = add_orders(clean_db, caller_id, [new_payload(8)])
    assert drive(rt, [a])[a].status == "complete"
    other = new_caller(clean_db, "other")
    [b] = add_orders(clean_db, other, [new_payload(8)])
    _unknown(clean_db, [a, b], upstream_id=None, upstream_status=None)
    orders = drive(rt, [a, b])
    for order in orders.values():
        assert (order.status, order.reason, order.due_at) == (
            "submit_unknown",
            "reconcile_ambiguous",
            None,
        )
        assert "EXT-8" in (order.message or "")


def test_a_504_to_a_submit_is_reconciled_not_resubmitted(
    runtime_factory, caller_id, stub, clean_db
):
    """A gateway timeout to a submit goes to submit_unknown and is looked up, never re-sent:
    the stub answers 504 without creating, so the order is held and the stub has no order."""
    rt = runtime_factory(reconcile_delay_s=0)
    stub.script("submit", [{"status": 504, "times": 1}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    order = drive(rt, [oid])[oid]
    steps = _reasons(clean_db, oid)
    assert ("submit_unknown", "submit_504") in steps
    assert (order.status, order.reason) == ("submit_unknown", "held_for_operator")
    assert stub.orders()["count"] == 0


def test_without_a_list_an_order_whose_id_is_known_is_followed_by_id(
    runtime_factory, caller_id, stub, clean_db
):
    """A 404 from the order list is "cannot look", not "not found": an order whose upstream id
    we know (a late answer, an operator's note) is followed with a GET by id and completes;
    nothing is submitted again."""
    rt = runtime_factory()
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    assert drive(rt, [oid])[oid].status == "complete"
    _unknown(clean_db, [oid])
    stub.script("list", [{"status": 404, "times": 5}])
    order = drive(rt, [oid])[oid]
    assert order.status == "complete"
    assert ("submitted", "reconciled") in _reasons(clean_db, oid)
    assert stub.orders()["count"] == 1
