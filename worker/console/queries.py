"""What the console pages read: every query bounded by an index (see ``bench/console.py``).

Order ids start with their creation time in milliseconds (``worker.ids.new_id``), so a time
range is also an id range: lists filter ``created_at`` exactly and add the id range so that
the scan stays within the index (``id_floor``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, defer

from worker.batches import store as batch_store
from worker.batches.view import batch_view
from worker.ids import utcnow
from worker.models import Batch, Caller, Order, OrderEvent, WebhookAttempt, WebhookDelivery
from worker.states import TERMINAL, Status

S = Status
OPEN = [str(s) for s in Status if s not in TERMINAL]
# A clock step between the id's time and created_at must not hide an order from a range.
ID_SLACK = timedelta(minutes=1)


def id_floor(prefix: str, at: datetime) -> str:
    """The smallest id of ``prefix`` created at ``at`` or later."""
    return f"{prefix}_{int(at.timestamp() * 1000):012x}"


@dataclass(frozen=True, slots=True)
class OrderQuery:
    """The console's order filter; every field optional, combined with AND."""

    caller_id: str | None = None
    status: str | None = None
    reason: str | None = None
    batch_id: str | None = None
    external_id: str | None = None
    created_since: datetime | None = None
    created_before: datetime | None = None

    def select(self) -> Select[Order]:
        stmt = select(Order).options(defer(Order.payload), defer(Order.preview))
        for column, value in (
            (Order.caller_id, self.caller_id),
            (Order.status, self.status),
            (Order.reason, self.reason),
            (Order.batch_id, self.batch_id),
            (Order.external_id, self.external_id),
        ):
            if value:
                stmt = stmt.where(column == value)
        if self.created_since is not None:
            stmt = stmt.where(
                Order.created_at >= self.created_since,
                Order.id >= id_floor("ord", self.created_since - ID_SLACK),
            )
        if self.created_before is not None:
            stmt = stmt.where(
                Order.created_at < self.created_before,
                Order.id < id_floor("ord", self.created_before + ID_SLACK),
            )
        return stmt


def order_list(
    session: Session, query: OrderQuery, *, limit: int, after_id: str | None
) -> tuple[list[Order], str | None]:
    """A page of orders, newest first, and the last id when there is a next page."""
    stmt = query.select()
    if after_id:
        stmt = stmt.where(Order.id < after_id)
    rows = list(session.scalars(stmt.order_by(Order.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def status_counts(session: Session, *, now: datetime, final_window: timedelta) -> dict[str, int]:
    """Orders by status: every open order, and final ones created within ``final_window``.

    One index range per status (``ix_orders_status_id``); counting every final order ever
    made would read the whole history on each refresh.
    """
    floor = id_floor("ord", now - final_window)
    counts = {}
    for status in Status:
        stmt = select(func.count()).where(Order.status == str(status))
        if status in TERMINAL:
            stmt = stmt.where(Order.id >= floor)
        counts[str(status)] = session.scalar(stmt) or 0
    return counts


def throughput(session: Session, *, now: datetime, minutes: int = 10) -> list[dict[str, Any]]:
    """Orders that reached a final state, per minute, over the last ``minutes`` (oldest first)."""
    since = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    rows = session.execute(
        select(OrderEvent.at, OrderEvent.to_status).where(
            OrderEvent.at >= since,
            OrderEvent.to_status.in_([str(S.COMPLETE), str(S.FAILED), str(S.REJECTED)]),
        )
    )
    buckets = {since + timedelta(minutes=i): {"complete": 0, "failed": 0} for i in range(minutes)}
    for at, to in rows:
        minute = at.replace(second=0, microsecond=0)
        if minute in buckets:
            buckets[minute]["complete" if to == S.COMPLETE else "failed"] += 1
    return [{"minute": m, **counts} for m, counts in buckets.items()]


def oldest_open(session: Session) -> Order | None:
    """The oldest order not yet in a final state (one index probe per open status)."""
    firsts = [
        first
        for status in OPEN
        if (first := session.scalar(select(func.min(Order.id)).where(Order.status == status)))
    ]
    return session.get(Order, min(firsts)) if firsts else None


def due_counts(session: Session, *, now: datetime) -> dict[str, int]:
    """Resting orders due now (the sweeper's next pick) and those waiting for a later time."""
    due = session.scalar(select(func.count()).where(Order.due_at <= now)) or 0
    later = session.scalar(select(func.count()).where(Order.due_at > now)) or 0
    return {"due": due, "later": later}


def failed_by_reason(session: Session) -> list[tuple[str | None, int]]:
    """Failed orders grouped by reason, largest group first."""
    rows = session.execute(
        select(Order.reason, func.count())
        .where(Order.status == str(S.FAILED))
        .group_by(Order.reason)
        .order_by(func.count().desc())
    )
    return [(reason, n) for reason, n in rows]


def held(session: Session, *, limit: int) -> tuple[list[Order], int]:
    """Held ``submit_unknown`` orders (oldest first, up to ``limit``) and how many there are."""
    where = (Order.status == str(S.SUBMIT_UNKNOWN), Order.due_at.is_(None))
    total = session.scalar(select(func.count()).where(*where)) or 0
    rows = list(session.scalars(select(Order).where(*where).order_by(Order.id).limit(limit)))
    return rows, total


def batches(
    session: Session, *, limit: int, before: str | None, states: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The newest batches (before the batch id ``before``), as batch objects with their
    caller: the batch rows and their counts rows, never a scan of the orders."""
    stmt = select(Batch).order_by(Batch.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(Batch.id < before)
    if states:
        stmt = stmt.where(Batch.state.in_(list(states)))
    rows = list(session.scalars(stmt))
    summaries = batch_store.summaries(session, [b.id for b in rows], now=utcnow())
    return [{**batch_view(b, summaries[b.id]), "caller_id": b.caller_id} for b in rows]


def batch_detail(session: Session, batch_id: str) -> dict[str, Any] | None:
    """A batch object with its caller and its history (who changed its state, and why)."""
    batch = batch_store.find(session, batch_id, None)
    if batch is None:
        return None
    summary = batch_store.summaries(session, [batch_id], now=utcnow())[batch_id]
    return {
        "batch": {**batch_view(batch, summary), "caller_id": batch.caller_id},
        "history": batch_store.history(session, batch_id),
    }


def caller_names(session: Session) -> dict[str, str]:
    """Caller id -> name (callers are few)."""
    return {caller_id: name for caller_id, name in session.execute(select(Caller.id, Caller.name))}


def order_detail(session: Session, order_id: str) -> dict[str, Any] | None:
    """An order with its history and its webhook deliveries (each with its attempts)."""
    order = session.get(Order, order_id)
    if order is None:
        return None
    events = list(
        session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        )
    )
    deliveries = list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.order_id == order_id)
            .order_by(WebhookDelivery.id)
        )
    )
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.id)
        ):
            attempts[attempt.delivery_id].append(attempt)
    caller = session.get(Caller, order.caller_id)
    return {
        "order": order,
        "caller": caller,
        "events": events,
        "deliveries": [(d, attempts[d.id]) for d in deliveries],
    }
