"""Creating orders and the operator's actions on them (cancel, schedule a retry).

Everything here runs inside a caller's transaction; enqueueing happens after commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from worker import repository as repo
from worker.ids import new_id, sha256_hex
from worker.models import Order, OrderEvent
from worker.repository import Event, Move
from worker.states import CANCELLABLE, Status, retry_entry

S = Status


def request_hash(payload: dict[str, Any]) -> str:
    """A stable hash of a payload (key order does not matter)."""
    return sha256_hex(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A validated payload ready to be stored."""

    payload: dict[str, Any]
    order_type: str
    external_id: str | None
    request_hash: str


def new_order(payload: dict[str, Any]) -> NewOrder:
    """Wrap a payload that passed validation."""
    ext = payload.get("external_id")
    # An empty external_id is no external_id (upstream, our id is sent in its place).
    ext = ext if isinstance(ext, str) and ext else None
    return NewOrder(payload, str(payload["order_type"]), ext, request_hash(payload))


@dataclass(slots=True)
class StoredOrder:
    """A just-created order as plain data (the ``orders`` columns; see ``views.order_view``)."""

    id: str
    caller_id: str
    batch_id: str | None
    external_id: str | None
    request_hash: str
    order_type: str
    payload: dict[str, Any]
    status: str
    attempts: int
    failures: int
    budget_from: datetime
    due_at: datetime
    created_at: datetime
    updated_at: datetime
    reason: str | None = None
    message: str | None = None
    next_attempt_at: datetime | None = None
    lease_owner: str | None = None
    preview: dict[str, Any] | None = None
    upstream_id: str | None = None
    upstream_reference: str | None = None
    upstream_status: str | None = None
    subscription_reference: str | None = None
    upstream_owner: str | None = None
    submitted_at: datetime | None = None


OrderLike = Order | StoredOrder
"""A stored order, loaded (ORM) or just created (plain data)."""

_ORDERS: Table = Order.__table__  # type: ignore[assignment]
_EVENTS: Table = OrderEvent.__table__  # type: ignore[assignment]


def create_orders(
    session: Session,
    caller_id: str,
    items: Sequence[NewOrder],
    now: datetime,
    enqueue_grace_s: float,
    batch_id: str | None = None,
    actor: str = "intake",
) -> list[StoredOrder]:
    """Insert ``items`` as ``received`` orders with their first history row, in bulk.

    ``due_at`` is set a grace period ahead: if the enqueue after commit never happens, the
    sweeper picks the orders up then. Plain rows through Core: building ORM objects for a
    10,000-order batch cost about half of the insert's time.
    """
    if not items:
        return []
    due = now + timedelta(seconds=enqueue_grace_s)
    received = str(S.RECEIVED)
    rows = [
        {
            "id": new_id("ord"),
            "caller_id": caller_id,
            "batch_id": batch_id,
            "external_id": item.external_id,
            "request_hash": item.request_hash,
            "order_type": item.order_type,
            "payload": item.payload,
            "status": received,
            "attempts": 0,
            "failures": 0,
            "budget_from": now,
            "due_at": due,
            "created_at": now,
            "updated_at": now,
        }
        for item in items
    ]
    session.execute(insert(_ORDERS), rows)
    session.execute(
        insert(_EVENTS),
        [
            {
                "order_id": r["id"],
                "at": now,
                "from_status": None,
                "to_status": received,
                "attempt": 0,
                "reason": None,
                "status_code": None,
                "message": None,
                "actor": actor,
            }
            for r in rows
        ],
    )
    return [StoredOrder(**r) for r in rows]  # type: ignore[arg-type]


def cancel(session: Session, order: Order, now: datetime, actor: str) -> list[Event]:
    """Cancel an order that has not been submitted; empty if it is past that point."""
    if order.status not in CANCELLABLE:
        return []
    move = Move(
        order.id,
        S(order.status),
        S.CANCELLED,
        {"due_at": None, "next_attempt_at": None},
        reason="cancelled_by_caller",
    )
    return repo.apply_moves(session, [move], now=now, owner=None, actor=actor)


def schedule_retry(
    session: Session, order: Order, at: datetime, now: datetime, actor: str
) -> list[Event]:
    """Put a ``failed`` (or held ``submit_unknown``) order back in the pipeline at ``at``.

    A fresh retry budget starts; the history row records who asked and when it will run.
    A ``submit_unknown`` order is re-submitted: the operator has decided it was not created.
    """
    if order.status == S.FAILED:
        to = retry_entry(
            order.preview is not None, order.submitted_at is not None, order.upstream_id
        )
        reason = "retry_scheduled"
    elif order.status == S.SUBMIT_UNKNOWN:
        to, reason = S.PREVIEWED, "operator_resubmit"
    else:
        return []
    values = {
        "failures": 0,
        "budget_from": now,
        "next_attempt_at": at,
        "due_at": at,
        "reason": reason,
        "message": None,
    }
    if to == S.SUBMITTED:
        values["submitted_at"] = now
    move = Move(
        order.id,
        S(order.status),
        to,
        values,
        reason=reason,
        message=f"scheduled for {at.isoformat()}",
    )
    return repo.apply_moves(session, [move], now=now, owner=None, actor=actor)


def find_for_caller(session: Session, caller_id: str, order_id: str) -> Order | None:
    """The caller's own order, or None (another caller's order is not found either)."""
    return session.scalar(select(Order).where(Order.id == order_id, Order.caller_id == caller_id))
