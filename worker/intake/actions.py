"""A caller's (or an operator's) actions on existing orders: cancel, schedule retries.

Each action is compare-and-set transitions with their history rows and the webhook outbox
rows, in one transaction (a large retry: one per chunk); whatever is due now is handed to
``dispatch`` after commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker import repository as repo
from worker.db import transaction
from worker.errors import OrderNotFound, WrongState
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.intake.store import find_for_caller
from worker.models import Order
from worker.repository import Event, Move
from worker.states import CANCELLABLE, RETRYABLE_BY_OPERATOR, Status, retry_entry
from worker.views import order_view
from worker.webhooks.outbox import record_deliveries

S = Status
RETRY_CHUNK = 500
"""Orders scheduled per transaction by a retry of a filter: row locks stay short."""


@dataclass(frozen=True, slots=True)
class RetryFilter:
    """Which orders ``retry_matching`` schedules (fields combine with AND)."""

    status: Status = Status.FAILED
    reason: str | None = None
    batch_id: str | None = None
    external_id: str | None = None


def is_held(order: Order) -> bool:
    """A ``submit_unknown`` order that reconciliation gave up on: it waits for a decision."""
    return order.status == S.SUBMIT_UNKNOWN and order.due_at is None


def cancel_move(order: Order) -> Move | None:
    """The move that cancels ``order``, or None if it is past submitting."""
    if order.status not in CANCELLABLE:
        return None
    values = {"due_at": None, "next_attempt_at": None}
    return Move(order.id, S(order.status), S.CANCELLED, values, reason="cancelled_by_caller")


def retry_move(order: Order, *, at: datetime, now: datetime) -> Move | None:
    """The move that puts a ``failed`` (or held ``submit_unknown``) order back at ``at``.

    A fresh retry budget starts; the history row records when it will run. A held
    ``submit_unknown`` order is re-submitted: whoever asks has decided it was not created.
    One still being reconciled is not retried (that would race the reconciliation).
    """
    if order.status == S.FAILED:
        to = retry_entry(
            order.preview is not None, order.submitted_at is not None, order.upstream_id
        )
        reason = "retry_scheduled"
    elif is_held(order):
        to, reason = S.PREVIEWED, "operator_resubmit"
    else:
        return None
    values: dict[str, Any] = {
        "failures": 0,
        "budget_from": now,
        "next_attempt_at": at,
        "due_at": at,
        "reason": reason,
        "message": None,
    }
    if to == S.SUBMITTED:
        values["submitted_at"] = now
    message = f"scheduled for {at.isoformat()}"
    return Move(order.id, S(order.status), to, values, reason=reason, message=message)


def cancel_order(
    db_url: str,
    caller_id: str,
    order_id: str,
    *,
    actor: str,
    dispatch: Dispatch | None = None,
) -> dict[str, Any]:
    """Cancel an order before it is submitted; returns its view (already cancelled: as is).

    Raises:
        OrderNotFound: no such order for ``caller_id``.
        WrongState: the order was submitted (or is being submitted), or is finished.
    """
    with transaction(db_url) as session:
        order = _load(session, caller_id, order_id)
        if order.status == S.CANCELLED:
            return order_view(order)
        move = cancel_move(order)
        events = (
            repo.apply_moves(session, [move], now=utcnow(), owner=None, actor=actor) if move else []
        )
        if not events:
            raise WrongState(
                f"order {order_id} is being processed; try again"
                if order.status in CANCELLABLE
                else f"order {order_id} is {order.status}: only orders not yet submitted "
                "(received, previewed) can be cancelled"
            )
        deliveries = record_deliveries(session, events)
        session.refresh(order)
        view = order_view(order)
    if dispatch is not None and deliveries:
        dispatch([], deliveries)
    return view


def retry_order(
    db_url: str,
    caller_id: str,
    order_id: str,
    *,
    at: datetime | None,
    grace_s: float,
    actor: str,
    dispatch: Dispatch | None = None,
) -> int:
    """Schedule a retry of one ``failed`` or held ``submit_unknown`` order at ``at`` (None: now).

    Raises:
        OrderNotFound: no such order for ``caller_id``.
        WrongState: the order is neither failed nor held (``submit_unknown`` still being
            reconciled is refused until reconciliation holds it).
    """
    now = utcnow()
    at = max(at or now, now)
    with transaction(db_url) as session:
        order = _load(session, caller_id, order_id)
        scheduled, events = _schedule(
            session, [order], at=at, now=now, grace_s=grace_s, actor=actor
        )
        if not scheduled:
            raise WrongState(_not_retryable(order))
        deliveries = record_deliveries(session, events)
    if dispatch is not None:
        dispatch(scheduled if at <= now else [], deliveries)
    return len(scheduled)


def retry_matching(
    db_url: str,
    caller_id: str | None,
    flt: RetryFilter,
    *,
    at: datetime | None,
    grace_s: float,
    actor: str,
    dispatch: Dispatch | None = None,
) -> int:
    """Schedule a retry of every order matching ``flt`` (``caller_id`` None: all callers).

    Works through the matches in chunks of ``RETRY_CHUNK``, one transaction each, so a retry
    of many thousands never holds one long transaction. Returns how many were scheduled;
    orders that moved on meanwhile are skipped.
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
    total = 0
    last_id = ""
    while True:
        with transaction(db_url) as session:
            targets = list(session.scalars(stmt.where(Order.id > last_id).limit(RETRY_CHUNK)))
            if not targets:
                break
            last_id = targets[-1].id
            scheduled, events = _schedule(
                session, targets, at=at, now=now, grace_s=grace_s, actor=actor
            )
            deliveries = record_deliveries(session, events)
        total += len(scheduled)
        if dispatch is not None:
            dispatch(scheduled if at <= now else [], deliveries)
    return total


def _load(session: Session, caller_id: str, order_id: str) -> Order:
    order = find_for_caller(session, caller_id, order_id)
    if order is None:
        raise OrderNotFound(order_id)
    return order


def _not_retryable(order: Order) -> str:
    if order.status == S.SUBMIT_UNKNOWN:
        return (
            f"order {order.id} is submit_unknown and still being reconciled with the "
            "upstream; it can be retried once it is held for a decision"
        )
    return (
        f"order {order.id} is {order.status}: only failed or held submit_unknown orders "
        "can be retried"
    )


def _schedule(
    session: Session,
    targets: Sequence[Order],
    *,
    at: datetime,
    now: datetime,
    grace_s: float,
    actor: str,
) -> tuple[list[str], list[Event]]:
    moves = [m for o in targets if (m := retry_move(o, at=at, now=now)) is not None]
    events = repo.apply_moves(session, moves, now=now, owner=None, actor=actor)
    scheduled = sorted({e["order_id"] for e in events})
    if scheduled and at <= now:
        # Enqueued right after commit; the sweeper only steps in if that enqueue is lost.
        session.execute(
            update(Order)
            .where(Order.id.in_(scheduled), Order.due_at == at)
            .values(due_at=now + timedelta(seconds=grace_s))
            .execution_options(synchronize_session=False)
        )
    return scheduled, events
