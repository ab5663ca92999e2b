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

from sqlalchemy import Select, func, select
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


def cancel_move(order: Order, reason: str = "cancelled_by_caller") -> Move | None:
    """The move that cancels ``order``, or None if it is past submitting."""
    if order.status not in CANCELLABLE:
        return None
    values = {"due_at": None, "next_attempt_at": None}
    return Move(order.id, S(order.status), S.CANCELLED, values, reason=reason)


HELD_RULE = (
    "a held submit_unknown order may already exist upstream: it is re-submitted only by an "
    "operator, one order at a time, after a fresh look upstream finds nothing "
    '(POST /v1/operator/orders/{id}/resolve {"not_created": true}, or the console\'s order page)'
)


def retry_move(order: Order, *, at: datetime, now: datetime) -> Move | None:
    """The move that puts a ``failed`` order back at ``at`` (None for any other order).

    A fresh retry budget starts; the history row records when it will run. A
    ``submit_unknown`` order is never retried here, held or not (see ``HELD_RULE``): only
    ``operator_actions.resolve_held`` re-submits it, after a fresh look upstream.
    """
    if order.status != S.FAILED:
        return None
    to = retry_entry(order.preview is not None, order.submitted_at is not None, order.upstream_id)
    reason = "retry_scheduled"
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
    caller_id: str | None,
    order_id: str,
    *,
    actor: str,
    dispatch: Dispatch | None = None,
    reason: str = "cancelled_by_caller",
) -> dict[str, Any]:
    """Cancel an order before it is submitted; returns its view (already cancelled: as is).

    ``caller_id`` None: any caller's order (an operator's action).

    Raises:
        OrderNotFound: no such order for ``caller_id``.
        WrongState: the order was submitted (or is being submitted), or is finished.
    """
    with transaction(db_url) as session:
        order = _load(session, caller_id, order_id)
        if order.status == S.CANCELLED:
            return order_view(order)
        move = cancel_move(order, reason)
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
    caller_id: str | None,
    order_id: str,
    *,
    at: datetime | None,
    actor: str,
    dispatch: Dispatch | None = None,
) -> int:
    """Schedule a retry of one ``failed`` order at ``at`` (None: now).

    ``caller_id`` None: any caller's order (an operator's action).

    Raises:
        OrderNotFound: no such order for ``caller_id``.
        WrongState: the order is not failed (a held ``submit_unknown`` one: see ``HELD_RULE``).
    """
    now = utcnow()
    at = max(at or now, now)
    with transaction(db_url) as session:
        order = _load(session, caller_id, order_id)
        scheduled, due_now, events = _schedule(session, [order], at=at, now=now, actor=actor)
        if not scheduled:
            raise WrongState(_not_retryable(order))
        deliveries = record_deliveries(session, events)
    if dispatch is not None:
        dispatch(due_now, deliveries, callers=[order.caller_id])
    return len(scheduled)


def matching_query(caller_id: str | None, flt: RetryFilter) -> Select[Order]:
    """The orders a retry of ``flt`` would touch, by id (``caller_id`` None: all callers).

    Only held ``submit_unknown`` orders match: one still being reconciled is not retryable.
    """
    stmt = select(Order).where(Order.status == str(flt.status)).order_by(Order.id)
    if flt.status == S.SUBMIT_UNKNOWN:
        stmt = stmt.where(Order.due_at.is_(None))
    if caller_id is not None:
        stmt = stmt.where(Order.caller_id == caller_id)
    if flt.reason is not None:
        stmt = stmt.where(Order.reason == flt.reason)
    if flt.batch_id is not None:
        stmt = stmt.where(Order.batch_id == flt.batch_id)
    if flt.external_id is not None:
        stmt = stmt.where(Order.external_id == flt.external_id)
    return stmt


def count_matching(
    session: Session, caller_id: str | None, flt: RetryFilter, *, sample_size: int = 10
) -> tuple[int, list[str]]:
    """How many orders a retry of ``flt`` would touch now, and the first ``sample_size`` ids.

    Nothing is written: this is the dry run of :func:`retry_matching`.
    """
    if flt.status not in RETRYABLE_BY_OPERATOR:
        raise WrongState(f"only {sorted(RETRYABLE_BY_OPERATOR)} orders can be retried")
    stmt = matching_query(caller_id, flt)
    matched = session.scalar(
        select(func.count()).select_from(stmt.order_by(None).with_only_columns(Order.id).subquery())
    )
    sample = list(session.scalars(stmt.with_only_columns(Order.id).limit(sample_size)))
    return int(matched or 0), sample


def retry_matching(
    db_url: str,
    caller_id: str | None,
    flt: RetryFilter,
    *,
    at: datetime | None,
    actor: str,
    dispatch: Dispatch | None = None,
    spread_per_s: float = 0.0,
) -> int:
    """Schedule a retry of every order matching ``flt`` (``caller_id`` None: all callers).

    Works through the matches in chunks of ``RETRY_CHUNK``, one transaction each, so a retry
    of many thousands never holds one long transaction. With ``spread_per_s`` > 0 the k-th
    order is due ``k // spread_per_s`` seconds after ``at`` (the first second's worth at
    ``at``), so a large retry reaches the upstream at that rate, not all at once. Returns how
    many were scheduled; orders that moved on meanwhile are skipped.
    """
    if flt.status not in RETRYABLE_BY_OPERATOR:
        raise WrongState(f"only {sorted(RETRYABLE_BY_OPERATOR)} orders can be retried")
    if flt.status == S.SUBMIT_UNKNOWN:
        with transaction(db_url) as session:
            held, _ = count_matching(session, caller_id, flt, sample_size=0)
        raise WrongState(f"{held} held order(s) matched and none was re-submitted: {HELD_RULE}")
    now = utcnow()
    at = max(at or now, now)
    stmt = matching_query(caller_id, flt)
    total = 0
    last_id = ""
    while True:
        with transaction(db_url) as session:
            targets = list(session.scalars(stmt.where(Order.id > last_id).limit(RETRY_CHUNK)))
            if not targets:
                break
            last_id = targets[-1].id
            scheduled, due_now, events = _schedule(
                session,
                targets,
                at=at,
                now=now,
                actor=actor,
                first=total,
                spread_per_s=spread_per_s,
            )
            deliveries = record_deliveries(session, events)
        total += len(scheduled)
        if dispatch is not None:
            callers = {o.caller_id for o in targets}
            dispatch(due_now, deliveries, callers=callers)
    return total


def _load(session: Session, caller_id: str | None, order_id: str) -> Order:
    if caller_id is None:
        order = session.get(Order, order_id)
    else:
        order = find_for_caller(session, caller_id, order_id)
    if order is None:
        raise OrderNotFound(order_id)
    return order


def _not_retryable(order: Order) -> str:
    if is_held(order):
        return f"order {order.id} is held (submit_unknown, {order.reason}): {HELD_RULE}"
    if order.status == S.SUBMIT_UNKNOWN:
        return (
            f"order {order.id} is submit_unknown and still being reconciled with the "
            "upstream; it can be retried once it is held for a decision"
        )
    return (
        f"order {order.id} is {order.status}: only failed or held submit_unknown orders "
        "can be retried"
    )


def spread_at(at: datetime, k: int, spread_per_s: float) -> datetime:
    """When the ``k``-th order of a retry spread at ``spread_per_s`` is due (0: all at ``at``)."""
    if spread_per_s <= 0:
        return at
    return at + timedelta(seconds=k // spread_per_s)


def _schedule(
    session: Session,
    targets: Sequence[Order],
    *,
    at: datetime,
    now: datetime,
    actor: str,
    first: int = 0,
    spread_per_s: float = 0.0,
) -> tuple[list[str], list[str], list[Event]]:
    """Apply the retry moves; returns (scheduled ids, ids due now, history rows)."""
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
