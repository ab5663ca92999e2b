"""Cancel one order before it is submitted (a caller its own; an operator any caller's)."""

from __future__ import annotations

from typing import Any

from worker import repository as repo
from worker.actions.actor import Actor
from worker.actions.moves import cancel_move, not_cancellable
from worker.actions.store import load
from worker.db import transaction
from worker.errors import WrongState
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.states import Status
from worker.views import order_view
from worker.webhooks.outbox import record_deliveries


def cancel_order(
    db_url: str, actor: Actor, order_id: str, *, dispatch: Dispatch | None = None
) -> dict[str, Any]:
    """Cancel ``order_id``; returns its view (already cancelled: as it is). The history row
    names ``actor`` and the reason says who cancelled (``cancelled_by_operator``).

    Raises:
        OrderNotFound: no such order in the actor's scope.
        WrongState: the order was submitted (or is being submitted), or is finished.
    """
    with transaction(db_url) as session:
        order = load(session, actor.scope(), order_id)
        if order.status == Status.CANCELLED:
            return order_view(order)
        move = cancel_move(order, actor.cancel_reason)
        events = (
            repo.apply_moves(session, [move], now=utcnow(), owner=None, actor=actor.label)
            if move
            else []
        )
        if not events:
            raise WrongState(not_cancellable(order))
        deliveries = record_deliveries(session, events)
        session.refresh(order)
        view = order_view(order)
    if dispatch is not None and deliveries:
        dispatch([], deliveries)
    return view
