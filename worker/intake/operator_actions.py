"""An operator's decision on a held ``submit_unknown`` order: found upstream, or not created.

Reconciliation holds an ambiguous submit it could not find upstream (``held_for_operator``).
An operator who looked upstream says either:

* **found as** ``order-...``: we read that object (``GET /api/objects/limio/orders/{id}``)
  and accept it only if its ``external_id`` is the one we sent for this order; the order then
  moves on as ``reconciled`` (``complete``, or ``submitted`` and followed);
* **not created**: the order is re-submitted (``operator_resubmit``), as a retry would.

The upstream is read before the transaction (no network call holds a row lock); the move is
then a compare-and-set, so an order that moved on meanwhile answers ``WrongState``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from schemas.upstream_responses import LimioOrderObject
from worker import repository as repo
from worker.db import read_session, transaction
from worker.errors import InvalidInput, OrderNotFound, PermanentError, WrongState
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.intake.actions import is_held, retry_move
from worker.models import Order
from worker.pipeline.outcomes import upstream_fields
from worker.pipeline.payload import sent_external_id
from worker.repository import Move
from worker.states import Status, upstream_status_outcome
from worker.views import order_view
from worker.webhooks.outbox import record_deliveries

S = Status
UpstreamLookup = Callable[[str], LimioOrderObject]
"""Reads one upstream order object by id (``UpstreamClient.get_order``)."""


def found_move(order: Order, obj: dict[str, Any], *, upstream_id: str, now: datetime) -> Move:
    """The move of a held order the operator found upstream as ``upstream_id``.

    Raises:
        WrongState: the order is not held for a decision.
        InvalidInput: the object's ``external_id`` is not the one sent for this order.
    """
    if not is_held(order):
        raise WrongState(f"order {order.id} is {order.status} and not held for a decision")
    sent = sent_external_id(order)
    seen = obj.external_id
    if seen != sent:
        message = (
            f"upstream order {upstream_id} has external_id {seen!r}, "
            f"but order {order.id} was sent as {sent!r}: not the same order"
        )
        raise InvalidInput(message, [{"field": "upstream_id", "message": message}])
    fields = {**upstream_fields(obj), "upstream_id": upstream_id, "lease_owner": None}
    message = f"found upstream as {upstream_id} (operator)"
    if upstream_status_outcome(fields.get("upstream_status")) is S.COMPLETE:
        values = {**fields, "due_at": None, "next_attempt_at": None}
        return Move(
            order.id, S.SUBMIT_UNKNOWN, S.COMPLETE, values, reason="reconciled", message=message
        )
    # Due now and dispatched after commit: the worker follows it from here.
    values = {**fields, "submitted_at": now, "next_attempt_at": now, "due_at": now}
    return Move(
        order.id, S.SUBMIT_UNKNOWN, S.SUBMITTED, values, reason="reconciled", message=message
    )


def not_created_move(order: Order, *, now: datetime) -> Move:
    """The move of a held order the operator says was not created upstream: re-submit it.

    Raises:
        WrongState: the order is not held for a decision.
    """
    move = retry_move(order, at=now, now=now) if is_held(order) else None
    if move is None:
        raise WrongState(f"order {order.id} is {order.status} and not held for a decision")
    move.message = "not created upstream (operator): re-submitting"
    return move


def resolve_held(
    db_url: str,
    order_id: str,
    *,
    upstream_id: str | None,
    lookup: UpstreamLookup,
    actor: str,
    dispatch: Dispatch | None = None,
) -> dict[str, Any]:
    """Apply an operator's decision on a held order; returns the order's view.

    ``upstream_id`` given: found upstream as that id (checked through ``lookup``); None: not
    created upstream. Any caller's order.

    Raises:
        OrderNotFound: no such order.
        WrongState: not held for a decision (or it moved on meanwhile).
        InvalidInput: the upstream has no such order, or it is another order.
        UpstreamError: the upstream could not be asked (try again).
    """
    with read_session(db_url) as session:
        if session.get(Order, order_id) is None:
            raise OrderNotFound(order_id)
    obj: LimioOrderObject | None = None
    if upstream_id is not None:
        try:
            obj = lookup(upstream_id)
        except PermanentError as exc:
            message = f"upstream has no order {upstream_id} ({exc.reason})"
            raise InvalidInput(message, [{"field": "upstream_id", "message": message}]) from exc
    now = utcnow()
    with transaction(db_url) as session:
        order = session.get(Order, order_id)
        if order is None:
            raise OrderNotFound(order_id)
        if obj is not None and upstream_id is not None:
            move = found_move(order, obj, upstream_id=upstream_id, now=now)
        else:
            move = not_created_move(order, now=now)
        events = repo.apply_moves(session, [move], now=now, owner=None, actor=actor)
        if not events:
            raise WrongState(f"order {order_id} moved on meanwhile; look again")
        deliveries = record_deliveries(session, events)
        session.refresh(order)
        view = order_view(order)
    if dispatch is not None:
        due = [order_id] if move.to != S.COMPLETE else []
        dispatch(due, deliveries, callers=[order.caller_id])
    return view
