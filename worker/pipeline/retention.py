"""Retention: the sweeper deletes what is past its horizon, a small batch per table per sweep.

Orders, deliveries and history would otherwise grow without bound (a delivery holds a full
copy of the order view). What goes:

- finished orders (complete, rejected, failed, cancelled) created and last changed before
  ``ORDERS_RETENTION_ORDERS_DAYS``, with their history rows;
- webhook deliveries that reached a final state (delivered, failed, disabled) created before
  ``ORDERS_RETENTION_DELIVERIES_DAYS``, with their attempts. Pending deliveries always stay.

Ids are time-ordered (:func:`worker.ids.new_id`), so "created before" is a primary-key range:
each batch is an index range scan, cheap enough to run on every sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from worker.models import Order, OrderEvent, WebhookAttempt, WebhookDelivery
from worker.states import TERMINAL


@dataclass(frozen=True, slots=True)
class Purged:
    """Rows deleted by one pass."""

    orders: int = 0
    events: int = 0
    deliveries: int = 0
    attempts: int = 0


def id_before(prefix: str, at: datetime) -> str:
    """The smallest id of ``prefix`` created at ``at``: every id below it is older."""
    return f"{prefix}_{int(at.timestamp() * 1000):012x}"


def horizon(now: datetime, days: float) -> datetime | None:
    """The cut-off for a horizon of ``days`` (None: keep forever)."""
    return now - timedelta(days=days) if days > 0 else None


def purge(
    session: Session,
    *,
    now: datetime,
    orders_days: float,
    deliveries_days: float,
    batch: int,
) -> Purged:
    """Delete at most ``batch`` orders and ``batch`` deliveries past their horizons."""
    deliveries = attempts = orders = events = 0
    if (cut := horizon(now, deliveries_days)) is not None:
        ids = list(
            session.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.id < id_before("msg", cut),
                    WebhookDelivery.status != "pending",
                )
                .order_by(WebhookDelivery.id)
                .limit(batch)
            )
        )
        if ids:
            attempts = _delete(session, WebhookAttempt, WebhookAttempt.delivery_id.in_(ids))
            deliveries = _delete(session, WebhookDelivery, WebhookDelivery.id.in_(ids))
    if (cut := horizon(now, orders_days)) is not None:
        ids = list(
            session.scalars(
                select(Order.id)
                .where(
                    Order.id < id_before("ord", cut),
                    Order.status.in_([str(s) for s in TERMINAL]),
                    Order.updated_at < cut,
                )
                .order_by(Order.id)
                .limit(batch)
            )
        )
        if ids:
            events = _delete(session, OrderEvent, OrderEvent.order_id.in_(ids))
            orders = _delete(session, Order, Order.id.in_(ids))
    return Purged(orders, events, deliveries, attempts)


def _delete(session: Session, model: type, condition: object) -> int:
    result: CursorResult[object] = session.execute(  # type: ignore[assignment]
        delete(model).where(condition).execution_options(synchronize_session=False)  # type: ignore[arg-type]
    )
    return int(result.rowcount or 0)
