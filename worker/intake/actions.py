"""A caller's (or an operator's) actions on existing orders: cancel, schedule retries.

Each action is one transaction: compare-and-set transitions with their history rows and the
webhook outbox rows; whatever is due now is handed to ``dispatch`` after commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.db import transaction
from worker.ids import utcnow
from worker.intake import store as orders
from worker.models import Order
from worker.repository import Event
from worker.states import CANCELLABLE, RETRYABLE_BY_OPERATOR, Status
from worker.views import order_view
from worker.webhooks.outbox import record_deliveries

Dispatch = Callable[[Sequence[str], Sequence[str]], object]
RETRY_CHUNK = 500


class OrderNotFound(LookupError):
    """No such order for this caller."""


class WrongState(Exception):
    """The order is not in a state that allows the action (409)."""


@dataclass(frozen=True, slots=True)
class RetryFilter:
    """Which orders ``retry_matching`` schedules (fields combine with AND)."""

    status: Status = Status.FAILED
    reason: str | None = None
    batch_id: str | None = None
    external_id: str | None = None


def _load(session: Session, caller_id: str, order_id: str) -> Order:
    order = orders.find_for_caller(session, caller_id, order_id)
    if order is None:
        raise OrderNotFound(order_id)
    return order


def cancel_order(
    db_url: str, caller_id: str, order_id: str, actor: str, dispatch: Dispatch | None = None
) -> dict[str, Any]:
    """Cancel an order before it is submitted; returns its view (already cancelled: as is).

    Raises:
        OrderNotFound: no such order for ``caller_id``.
        WrongState: the order was submitted (or is being submitted), or is finished.
    """
    with transaction(db_url) as session:
        order = _load(session, caller_id, order_id)
        if order.status == Status.CANCELLED:
            return order_view(order)
        events = orders.cancel(session, order, utcnow(), actor)
        if not events:
            busy = order.status in CANCELLABLE
            raise WrongState(
                f"order {order_id} is being processed; try again"
                if busy
                else f"order {order_id} is {order.status}: only orders not yet submitted "
                "(received, previewed) can be cancelled"
            )
        deliveries = record_deliveries(session, events)
        session.refresh(order)
        view = order_view(order)
    if dispatch is not None and deliveries:
        dispatch([], deliveries)
    return view


def _schedule(
    session: Session,
    targets: Sequence[Order],
    at: datetime,
    now: datetime,
    grace_s: float,
    actor: str,
) -> tuple[list[str], list[Event]]:
    scheduled: list[str] = []
    events: list[Event] = []
    for order in targets:
        moved = orders.schedule_retry(session, order, at, now, actor)
        if moved:
            scheduled.append(order.id)
            events.extend(moved)
    if scheduled and at <= now:
        # Enqueued right after commit; the sweeper only steps in if that enqueue is lost.
        session.execute(
            update(Order)
            .where(Order.id.in_(scheduled), Order.due_at == at)
            .values(due_at=now + timedelta(seconds=grace_s))
            .execution_options(synchronize_session=False)
        )
    return scheduled, events


def retry_order(
    db_url: str,
    caller_id: str,
    order_id: str,
    at: datetime | None,
    grace_s: float,
    actor: str,
    dispatch: Dispatch | None = None,
) -> int:
    """Schedule a retry of one ``failed`` or ``submit_unknown`` order at ``at`` (None: now).

    Raises:
        OrderNotFound: no such order for ``caller_id``.
        WrongState: the order is neither failed nor submit_unknown.
    """
    now = utcnow()
    at = max(at or now, now)
    with transaction(db_url) as session:
        order = _load(session, caller_id, order_id)
        scheduled, events = _schedule(session, [order], at, now, grace_s, actor)
        if not scheduled:
            raise WrongState(
                f"order {order_id} is {order.status}: only failed or "
                "submit_unknown orders can be retried"
            )
        deliveries = record_deliveries(session, events)
    if dispatch is not None:
        dispatch(scheduled if at <= now else [], deliveries)
    return len(scheduled)


def retry_matching(
    db_url: str,
    caller_id: str | None,
    flt: RetryFilter,
    at: datetime | None,
    grace_s: float,
    actor: str,
    dispatch: Dispatch | None = None,
) -> int:
    """Schedule a retry of every order matching ``flt`` (``caller_id`` None: all callers).

    Returns how many were scheduled; orders that moved on meanwhile are skipped.
    """
    if flt.status not in RETRYABLE_BY_OPERATOR:
        raise WrongState(f"only {sorted(RETRYABLE_BY_OPERATOR)} orders can be retried")
    now = utcnow()
    at = max(at or now, now)
    stmt = select(Order).where(Order.status == str(flt.status)).order_by(Order.id)
    if caller_id is not None:
        stmt = stmt.where(Order.caller_id == caller_id)
    if flt.reason is not None:
        stmt = stmt.where(Order.reason == flt.reason)
    if flt.batch_id is not None:
        stmt = stmt.where(Order.batch_id == flt.batch_id)
    if flt.external_id is not None:
        stmt = stmt.where(Order.external_id == flt.external_id)
    with transaction(db_url) as session:
        targets = list(session.scalars(stmt))
        scheduled: list[str] = []
        events: list[Event] = []
        for start in range(0, len(targets), RETRY_CHUNK):
            ids, moved = _schedule(
                session, targets[start : start + RETRY_CHUNK], at, now, grace_s, actor
            )
            scheduled.extend(ids)
            events.extend(moved)
        deliveries = record_deliveries(session, events)
    if dispatch is not None:
        dispatch(scheduled if at <= now else [], deliveries)
    return len(scheduled)
