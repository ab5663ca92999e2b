"""The pure decisions of the order actions: which move a cancel or a retry makes, and what a
held order is. No I/O: the repository applies the moves with compare-and-set."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from worker.models import Order
from worker.repository import Move
from worker.states import CANCELLABLE, Status, retry_entry

S = Status

HELD_RULE = (
    "a held submit_unknown order may already exist upstream: it is re-submitted only by an "
    "operator, one order at a time, after a fresh look upstream finds nothing "
    '(POST /v1/operator/orders/{id}/resolve {"not_created": true}, or the console\'s order page)'
)


def is_held(order: Order) -> bool:
    """A ``submit_unknown`` order that reconciliation gave up on: it waits for a decision."""
    return order.status == S.SUBMIT_UNKNOWN and order.due_at is None


def cancel_move(order: Order, reason: str = "cancelled_by_caller") -> Move | None:
    """The move that cancels ``order``, or None if it is past submitting."""
    if order.status not in CANCELLABLE:
        return None
    values = {"due_at": None, "next_attempt_at": None}
    return Move(order.id, S(order.status), S.CANCELLED, values, reason=reason)


def not_cancellable(order: Order) -> str:
    """Why a cancel of ``order`` did not happen (its move lost, or there was none)."""
    if order.status in CANCELLABLE:
        return f"order {order.id} is being processed; try again"
    return (
        f"order {order.id} is {order.status}: only orders not yet submitted "
        "(received, previewed) can be cancelled"
    )


def retry_move(order: Order, *, at: datetime, now: datetime) -> Move | None:
    """The move that puts a ``failed`` order back at ``at`` (None for any other order).

    A fresh retry budget starts; the history row records when it will run. A
    ``submit_unknown`` order is never retried here, held or not (see ``HELD_RULE``): only
    ``worker.actions.resolve`` re-submits it, after a fresh look upstream.
    """
    if order.status != S.FAILED:
        return None
    to = retry_entry(order.preview is not None, order.submitted_at is not None, order.upstream_id)
    reason = "retry_scheduled"
    values: dict[str, Any] = {
        "failures": 0,
        "budget_from": now,
        "next_attempt_at": at,
        "due_at": at,
        "reason": reason,
        "message": None,
    }
    if to == S.SUBMITTED:
        values["submitted_at"] = now
    message = f"scheduled for {at.isoformat()}"
    return Move(order.id, S(order.status), to, values, reason=reason, message=message)


def not_retryable(order: Order) -> str:
    """Why a retry of ``order`` was refused."""
    if is_held(order):
        return f"order {order.id} is held (submit_unknown, {order.reason}): {HELD_RULE}"
    if order.status == S.SUBMIT_UNKNOWN:
        return (
            f"order {order.id} is submit_unknown and still being reconciled with the "
            "upstream; it can be retried once it is held for a decision"
        )
    return (
        f"order {order.id} is {order.status}: only failed or held submit_unknown orders "
        "can be retried"
    )


def spread_at(at: datetime, k: int, spread_per_s: float) -> datetime:
    """When the ``k``-th order of a retry spread at ``spread_per_s`` is due (0: all at ``at``)."""
    if spread_per_s <= 0:
        return at
    return at + timedelta(seconds=k // spread_per_s)
