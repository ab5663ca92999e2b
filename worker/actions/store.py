"""The database side the order actions share: an order in the actor's scope, and applying
retry moves with their history rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from worker import repository as repo
from worker.actions.moves import retry_move, spread_at
from worker.errors import OrderNotFound
from worker.intake.store import find_for_caller
from worker.models import Order
from worker.repository import Event, Move


def load(session: Session, scope: str | None, order_id: str) -> Order:
    """The order ``order_id`` of the caller ``scope`` (None: any caller's).

    Raises:
        OrderNotFound: no such order in that scope (another caller's is not found either).
    """
    order = session.get(Order, order_id) if scope is None else None
    if scope is not None:
        order = find_for_caller(session, scope, order_id)
    if order is None:
        raise OrderNotFound(order_id)
    return order


def schedule(
    session: Session,
    targets: Sequence[Order],
    *,
    at: datetime,
    now: datetime,
    actor: str,
    first: int = 0,
    spread_per_s: float = 0.0,
) -> tuple[list[str], list[str], list[Event]]:
    """Apply the retry moves of ``targets``; returns (scheduled ids, ids due now, history
    rows). Orders that are not retryable, or moved on meanwhile, are skipped."""
    moves: list[Move] = []
    for order in targets:
        when = spread_at(at, first + len(moves), spread_per_s)
        if (move := retry_move(order, at=when, now=now)) is not None:
            moves.append(move)
    events = repo.apply_moves(session, moves, now=now, owner=None, actor=actor)
    won = {e["order_id"] for e in events}
    scheduled = sorted(won)
    due_now = sorted(m.order_id for m in moves if m.order_id in won and m.values["due_at"] <= now)
    return scheduled, due_now, events
