"""The decisions of an operator's resolve of a held ``submit_unknown`` order (no database,
no network of their own: the look upstream goes through the callables it is given).

* **found as** ``order-...``: accepted only if the upstream object's ``external_id`` is the
  one we sent for this order; the order moves on as ``reconciled`` (``complete``, or
  ``submitted`` and followed);
* **not created**: only when a fresh look upstream (by its upstream id where known, and for
  its ``external_id`` in the order list) finds nothing is the order re-submitted
  (``operator_resubmit``). Found, or no list to search: it stays held, and the look is a
  history row either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.upstream_responses import LimioOrderObject, OrderSummary
from worker.actions.moves import is_held
from worker.errors import InvalidInput, PermanentError, WrongState
from worker.models import Order
from worker.pipeline.outcomes import upstream_fields
from worker.pipeline.payload import sent_external_id
from worker.repository import Move
from worker.states import Status, upstream_status_outcome

S = Status
UpstreamLookup = Callable[[str], LimioOrderObject]
"""Reads one upstream order object by id (``UpstreamClient.get_order``)."""
UpstreamSearch = Callable[[str], list[OrderSummary]]
"""The upstream orders carrying one ``external_id`` in the order list (``PermanentError``:
the upstream offers no list)."""


def not_held(order: Order) -> WrongState:
    return WrongState(f"order {order.id} is {order.status} and not held for a decision")


def found_move(order: Order, obj: LimioOrderObject, *, upstream_id: str, now: datetime) -> Move:
    """The move of a held order the operator found upstream as ``upstream_id``.

    Raises:
        WrongState: the order is not held for a decision.
        InvalidInput: the object's ``external_id`` is not the one sent for this order.
    """
    if not is_held(order):
        raise not_held(order)
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


@dataclass(frozen=True, slots=True)
class Look:
    """A fresh look upstream for a held order: what was asked and what it answered."""

    answer: str
    reason: str = "operator_lookup"
    refusal: str | None = None
    """Why the order must not be re-submitted (found, or the upstream could not be searched)."""


def not_created_move(order: Order, look: Look, *, now: datetime) -> Move:
    """The move of a held order the operator says was not created upstream, after ``look``:
    re-submit it when the look found nothing, else record the look and keep it held.

    Raises:
        WrongState: the order is not held for a decision.
    """
    if not is_held(order):
        raise not_held(order)
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
