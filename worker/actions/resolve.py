"""An operator's decision on a held ``submit_unknown`` order: found upstream, or not created.

Reconciliation holds an ambiguous submit it could not find upstream (``held_for_operator``).
This is the only way a held order is ever re-submitted (a retry refuses it): a blind
re-submit may create it twice. The decisions are in :mod:`worker.actions.resolve_moves`.

The upstream is read before the transaction (no network call holds a row lock); the move is
then a compare-and-set, so an order that moved on meanwhile answers ``WrongState``.
"""

from __future__ import annotations

import re
from typing import Any

from schemas.upstream_responses import UPSTREAM_ID_PATTERN, LimioOrderObject
from worker import repository as repo
from worker.actions.actor import Actor
from worker.actions.moves import is_held
from worker.actions.resolve_moves import (
    Look,
    UpstreamLookup,
    UpstreamSearch,
    found_move,
    fresh_look,
    not_created_move,
    not_held,
)
from worker.db import read_session, transaction
from worker.errors import InvalidInput, OrderNotFound, PermanentError, UpstreamError, WrongState
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.models import Order
from worker.pipeline.payload import sent_external_id
from worker.states import Status
from worker.views import order_view
from worker.webhooks.outbox import record_deliveries

_UPSTREAM_ID = re.compile(UPSTREAM_ID_PATTERN)


def resolve_held(
    db_url: str,
    actor: Actor,
    order_id: str,
    *,
    upstream_id: str | None,
    lookup: UpstreamLookup,
    search: UpstreamSearch,
    dispatch: Dispatch | None = None,
) -> dict[str, Any]:
    """Apply an operator's decision on a held order of any caller; returns the order's view.

    ``upstream_id`` given: found upstream as that id (checked through ``lookup``, and no other
    order of ours may be tied to it); None: not created upstream (re-submitted only if a fresh
    look, through ``lookup`` and ``search``, finds nothing).

    Raises:
        OrderNotFound: no such order.
        WrongState: not held for a decision (or it moved on meanwhile); the upstream order
            is tied to another order of ours; the fresh look found it, or could not search.
        InvalidInput: the upstream has no such order, or it is another order.
        UpstreamError: the upstream could not be asked (``message`` says so; try again).
    """
    if actor.role == "caller":
        raise WrongState(f"order {order_id}: only an operator resolves a held order")
    if upstream_id is not None and not _UPSTREAM_ID.fullmatch(upstream_id):
        message = f"upstream_id: {upstream_id[:120]!r} is not an upstream order id (order-...)"
        raise InvalidInput(message, [{"field": "upstream_id", "message": message}])
    try:
        return _resolve(
            db_url,
            actor,
            order_id,
            upstream_id=upstream_id,
            lookup=lookup,
            search=search,
            dispatch=dispatch,
        )
    except UpstreamError as exc:
        message = f"the upstream could not be asked about {upstream_id}: {exc.reason}; try again"
        raise UpstreamError(exc.reason, message, status_code=exc.status_code) from exc


def _resolve(
    db_url: str,
    actor: Actor,
    order_id: str,
    *,
    upstream_id: str | None,
    lookup: UpstreamLookup,
    search: UpstreamSearch,
    dispatch: Dispatch | None,
) -> dict[str, Any]:
    with read_session(db_url) as session:
        held = session.get(Order, order_id)
        if held is None:
            raise OrderNotFound(order_id)
        if not is_held(held):
            raise not_held(held)
        tied = repo.sharing_external_ids(session, [sent_external_id(held)], exclude=[order_id])
        tied_ids = {u for pairs in tied.values() for _, u in pairs if u}
    look: Look | None = None
    obj: LimioOrderObject | None = None
    if upstream_id is None:
        look = fresh_look(held, lookup=lookup, search=search, tied=tied_ids)
    else:
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
        events = repo.apply_moves(session, [move], now=now, owner=None, actor=actor.label)
        if not events:
            raise WrongState(f"order {order_id} moved on meanwhile; look again")
        deliveries = record_deliveries(session, events)
        session.refresh(order)
        view = order_view(order)
    if look is not None and look.refusal is not None:
        # The look is recorded (committed above); the order stays held.
        raise WrongState(f"not re-submitted: {look.refusal}")
    if dispatch is not None:
        due = [order_id] if move.to != Status.COMPLETE else []
        dispatch(due, deliveries, callers=[order.caller_id])
    return view
