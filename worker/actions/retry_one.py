"""Schedule a retry of one ``failed`` order, now or at a time."""

from __future__ import annotations

from datetime import datetime

from worker.actions.actor import Actor
from worker.actions.moves import not_retryable
from worker.actions.store import load, schedule
from worker.actions.when import due_at
from worker.db import transaction
from worker.errors import WrongState
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.webhooks.outbox import record_deliveries


def retry_order(
    db_url: str,
    actor: Actor,
    order_id: str,
    *,
    at: datetime | None = None,
    dispatch: Dispatch | None = None,
) -> int:
    """Schedule a retry of ``order_id`` at ``at`` (None or past: now; naive is UTC); returns
    how many were scheduled (1). A fresh retry budget starts; the history row names ``actor``.

    Raises:
        InvalidInput: ``at`` is out of range (checked before anything is read).
        OrderNotFound: no such order in the actor's scope.
        WrongState: the order is not failed (a held ``submit_unknown`` one: see ``HELD_RULE``).
    """
    now = utcnow()
    when = due_at(at, now=now)
    with transaction(db_url) as session:
        order = load(session, actor.scope(), order_id)
        scheduled, due_now, events = schedule(session, [order], at=when, now=now, actor=actor.label)
        if not scheduled:
            raise WrongState(not_retryable(order))
        deliveries = record_deliveries(session, events)
    if dispatch is not None:
        dispatch(due_now, deliveries, callers=[order.caller_id])
    return len(scheduled)
