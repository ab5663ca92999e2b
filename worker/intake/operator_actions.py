"""An operator's decision on a held ``submit_unknown`` order: found upstream, or not created.

Reconciliation holds an ambiguous submit it could not find upstream (``held_for_operator``).
An operator who looked upstream says either:

* **found as** ``order-...``: we read that object (``GET /api/objects/limio/orders/{id}``)
  and accept it only if its ``external_id`` is the one we sent for this order and no other
  order of ours (any caller's: ``external_id`` is unique per caller only) is tied to it
  already; the order then moves on as ``reconciled`` (``complete``, or ``submitted`` and
  followed);
* **not created**: we look upstream again at that moment (by its upstream id where known,
  and for its ``external_id`` in the order list); only when that look finds nothing is the
  order re-submitted (``operator_resubmit``). Found, or no list to search: it stays held.
  Either way the look and its answer are a history row. This is the only way a held order
  is ever re-submitted (a retry refuses it): a blind re-submit may create it twice.

The upstream is read before the transaction (no network call holds a row lock); the move is
then a compare-and-set, so an order that moved on meanwhile answers ``WrongState``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.upstream_responses import LimioOrderObject, OrderSummary
from worker import repository as repo
from worker.db import read_session, transaction
from worker.errors import InvalidInput, OrderNotFound, PermanentError, WrongState
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.intake.actions import is_held
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
UpstreamSearch = Callable[[str], list[OrderSummary]]
"""The upstream orders carrying one ``external_id`` in the order list (``PermanentError``:
the upstream offers no list)."""


def found_move(order: Order, obj: LimioOrderObject, *, upstream_id: str, now: datetime) -> Move:
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


def not_created_move(order: Order, look: Look, *, now: datetime) -> Move:
    """The move of a held order the operator says was not created upstream, after ``look``:
    re-submit it when the look found nothing, else record the look and keep it held.

    Raises:
        WrongState: the order is not held for a decision.
    """
    if not is_held(order):
        raise WrongState(f"order {order.id} is {order.status} and not held for a decision")
    if look.refusal is not None:
        values: dict[str, Any] = {"due_at": None, "next_attempt_at": None, "reason": order.reason}
        return Move(
            order.id,
            S.SUBMIT_UNKNOWN,
            S.SUBMIT_UNKNOWN,
            values,
            reason=look.reason,
            message=f"{look.answer}; not re-submitted",
        )
    values = {
        "failures": 0,
        "budget_from": now,
        "next_attempt_at": now,
        "due_at": now,
        "reason": "operator_resubmit",
        "message": None,
    }
    message = f"not created upstream (operator); {look.answer}: re-submitting"
    return Move(
        order.id, S.SUBMIT_UNKNOWN, S.PREVIEWED, values, reason="operator_resubmit", message=message
    )


@dataclass(frozen=True, slots=True)
class Look:
    """A fresh look upstream for a held order: what was asked and what it answered."""

    answer: str
    reason: str = "operator_lookup"
    refusal: str | None = None
    """Why the order must not be re-submitted (found, or the upstream could not be searched)."""


def fresh_look(
    order: Order, *, lookup: UpstreamLookup, search: UpstreamSearch, tied: set[str]
) -> Look:
    """Look upstream now for ``order``: by its upstream id where known, and for the
    ``external_id`` it was sent with in the order list. Upstream orders in ``tied`` (already
    tied to other orders of ours) are not this order's.

    Raises:
        UpstreamError: the upstream could not be asked (nothing is decided; try again).
    """
    ext = sent_external_id(order)
    parts: list[str] = []
    found: list[str] = []
    if order.upstream_id:
        try:
            lookup(order.upstream_id)
            found.append(order.upstream_id)
            parts.append(f"by id {order.upstream_id}: found")
        except PermanentError as exc:
            parts.append(f"by id {order.upstream_id}: not found ({exc.reason})")
    try:
        listed = [item.id for item in search(ext) if item.id and item.id not in tied]
    except PermanentError as exc:
        answer = "; ".join([*parts, f"order list: not offered ({exc.reason})"])
        refusal = (
            f"the upstream offers no order list to search for external_id {ext!r} "
            f"({exc.reason}): whether order {order.id} was created cannot be looked up"
        )
        return Look(f"looked upstream: {answer}", "operator_lookup_unavailable", refusal)
    found += [i for i in listed if i not in found]
    parts.append(
        f"order list: {', '.join(listed)} carry external_id {ext!r}"
        if listed
        else f"order list: no order with external_id {ext!r}"
    )
    answer = f"looked upstream: {'; '.join(parts)}"
    if found:
        refusal = (
            f"a fresh look upstream found {', '.join(found)} for order {order.id} "
            f"(external_id {ext!r}): resolve it as found upstream, or leave it held"
        )
        return Look(answer, "operator_lookup_found", refusal)
    return Look(answer)


def resolve_held(
    db_url: str,
    order_id: str,
    *,
    upstream_id: str | None,
    lookup: UpstreamLookup,
    search: UpstreamSearch,
    actor: str,
    dispatch: Dispatch | None = None,
) -> dict[str, Any]:
    """Apply an operator's decision on a held order; returns the order's view.

    ``upstream_id`` given: found upstream as that id (checked through ``lookup``); None: not
    created upstream (re-submitted only if a fresh look, through ``lookup`` and ``search``,
    finds nothing). Any caller's order.

    Raises:
        OrderNotFound: no such order.
        WrongState: not held for a decision (or it moved on meanwhile); the upstream order
            is tied to another order of ours; the fresh look found it, or could not search.
        InvalidInput: the upstream has no such order, or it is another order.
        UpstreamError: the upstream could not be asked (try again).
    """
    with read_session(db_url) as session:
        held = session.get(Order, order_id)
        if held is None:
            raise OrderNotFound(order_id)
        if not is_held(held):
            raise WrongState(f"order {order_id} is {held.status} and not held for a decision")
        tied = repo.sharing_external_ids(session, [sent_external_id(held)], exclude=[order_id])
        tied_ids = {u for pairs in tied.values() for _, u in pairs if u}
    look: Look | None = None
    if upstream_id is None:
        look = fresh_look(held, lookup=lookup, search=search, tied=tied_ids)
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
            if tied_to := repo.orders_tied_to(session, upstream_id, exclude=order_id):
                raise WrongState(
                    f"upstream order {upstream_id} is already tied to order {tied_to[0]}: "
                    f"one upstream order is never the result of two of ours"
                )
        else:
            assert look is not None
            move = not_created_move(order, look, now=now)
        events = repo.apply_moves(session, [move], now=now, owner=None, actor=actor)
        if not events:
            raise WrongState(f"order {order_id} moved on meanwhile; look again")
        deliveries = record_deliveries(session, events)
        session.refresh(order)
        view = order_view(order)
    if look is not None and look.refusal is not None:
        # The look is recorded (committed above); the order stays held.
        raise WrongState(f"not re-submitted: {look.refusal}")
    if dispatch is not None:
        due = [order_id] if move.to != S.COMPLETE else []
        dispatch(due, deliveries, callers=[order.caller_id])
    return view
