"""The pure parts of the action layer: who acts (actor labels and scope), requested times,
and the moves a cancel or a retry makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.actions import actor as actors
from worker.actions.moves import cancel_move, is_held, not_retryable, retry_move, spread_at
from worker.actions.when import due_at, utc
from worker.errors import InvalidInput
from worker.models import Order

NOW = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)


def _order(status: str, **values: object) -> Order:
    return Order(id="ord_" + "0" * 32, caller_id="clr_x", status=status, **values)


def test_actor_labels_are_the_history_names() -> None:
    """A caller is named by id, an operator by name, an admin by name; cancels say who."""
    assert actors.caller("clr_1").label == "caller:clr_1"
    assert actors.operator("olga").label == "operator:olga"
    assert actors.admin("root").label == "admin:root"
    assert actors.operator("olga").cancel_reason == "cancelled_by_operator"
    assert actors.caller("clr_1").cancel_reason == "cancelled_by_caller"
    assert len(actors.operator("x" * 200).label) == 64


def test_a_caller_acts_only_on_its_own_orders() -> None:
    """Asking for another caller's orders does not widen a caller's scope; an operator's
    scope is the caller it asks for, or every caller."""
    assert actors.caller("clr_1").scope("clr_2") == "clr_1"
    assert actors.caller("clr_1").scope() == "clr_1"
    assert actors.operator("olga").scope("clr_2") == "clr_2"
    assert actors.operator("olga").scope() is None


def test_requested_times_are_utc_and_never_past() -> None:
    """Naive times are UTC, offsets are converted, a past time or none is now."""
    assert utc(datetime(2025, 2, 1, 13, 0), "at") == datetime(2025, 2, 1, 13, 0, tzinfo=UTC)
    plus_two = datetime(2025, 2, 1, 15, 0, tzinfo=timezone(timedelta(hours=2)))
    assert due_at(plus_two, now=NOW) == datetime(2025, 2, 1, 13, 0, tzinfo=UTC)
    assert due_at(None, now=NOW) == NOW
    assert due_at(NOW - timedelta(days=1), now=NOW) == NOW
    assert utc(None, "since") is None


def test_an_out_of_range_time_is_invalid_input_naming_the_field() -> None:
    """A time that cannot be moved to UTC is refused as 422 naming the field."""
    edge = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(InvalidInput) as refused:
        due_at(edge, now=NOW)
    assert refused.value.status_code == 422
    assert refused.value.fields[0]["field"] == "at"
    with pytest.raises(InvalidInput) as refused:
        utc(edge, "since")
    assert refused.value.fields[0]["field"] == "since"


def test_only_failed_orders_get_a_retry_move() -> None:
    """A failed order goes back with a fresh budget at the time asked; others get none, and
    the refusal says why (a held order names the operator's resolve)."""
    move = retry_move(_order("failed", preview=None, submitted_at=None), at=NOW, now=NOW)
    assert move is not None and move.to == "received" and move.values["due_at"] == NOW
    assert move.values["failures"] == 0 and move.reason == "retry_scheduled"
    held = _order("submit_unknown", due_at=None, reason="held_for_operator")
    assert retry_move(held, at=NOW, now=NOW) is None and is_held(held)
    assert "fresh look upstream" in not_retryable(held)
    reconciling = _order("submit_unknown", due_at=NOW)
    assert not is_held(reconciling) and "still being reconciled" in not_retryable(reconciling)
    assert "only failed" in not_retryable(_order("complete"))


def test_cancel_moves_only_before_submit() -> None:
    """Received and previewed orders can be cancelled, with the actor's reason; not later."""
    move = cancel_move(_order("previewed"), "cancelled_by_operator")
    assert move is not None and (move.to, move.reason) == ("cancelled", "cancelled_by_operator")
    assert cancel_move(_order("submitted")) is None


def test_a_spread_retry_is_due_one_second_per_rate() -> None:
    """At 2 orders/s the 0th and 1st go at ``at``, the 2nd one second later; 0 is no spread."""
    assert [spread_at(NOW, k, 2) - NOW for k in (0, 1, 2, 5)] == [
        timedelta(0),
        timedelta(0),
        timedelta(seconds=1),
        timedelta(seconds=2),
    ]
    assert spread_at(NOW, 1000, 0) == NOW
