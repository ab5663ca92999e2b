"""The sweeper: the database is the source of truth, the broker only a transport.

Run every few seconds by Celery beat. It recovers orders whose worker died (lease expired)
and enqueues due webhook deliveries; orders whose time has come (retries, follow-ups, orders
never enqueued, messages lost with a Redis restart) go out through the dispatcher
(:mod:`worker.queue.dispatcher`), which the sweep task runs too. Safe to run twice at once:
each pick-up is a compare-and-set on ``due_at``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from worker import repository as repo
from worker.models import IdempotencyKey, Order, WebhookDelivery
from worker.repository import Move
from worker.states import IN_FLIGHT, RESTING, Status

S = Status

# Where an order whose lease expired mid-step goes: preview is safe to repeat, submit is not.
RECOVERY: dict[Status, tuple[Status, str]] = {
    S.PREVIEWING: (S.RECEIVED, "lease_expired"),
    S.SUBMITTING: (S.SUBMIT_UNKNOWN, "worker_lost_during_submit"),
}


def recover_expired_leases(session: Session, *, now: datetime, limit: int) -> int:
    """Move in-flight orders whose lease expired to a safe resting state, with history."""
    # Rows a worker is writing right now are skipped, not waited for: they are not lost (their
    # lease is being renewed or their answer applied), and waiting is how sweeps deadlocked.
    rows = session.execute(
        select(Order.id, Order.status, Order.lease_owner)
        .where(Order.status.in_([str(s) for s in IN_FLIGHT]), Order.due_at <= now)
        .order_by(Order.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    recovered = 0
    for order_id, status, owner in rows:
        to, reason = RECOVERY[S(status)]
        values = {"lease_owner": None, "due_at": now, "next_attempt_at": None}
        move = Move(
            order_id, S(status), to, values, reason=reason, message=f"lease of {owner} expired"
        )
        recovered += bool(repo.apply_moves(session, [move], now=now, owner=owner, actor="sweeper"))
    # Leases without a status change (follow-up, reconcile lookups) are simply released.
    stale = (
        select(Order.id)
        .where(
            Order.status.in_([str(s) for s in RESTING]),
            Order.lease_owner.is_not(None),
            Order.due_at <= now,
        )
        .order_by(Order.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stale_ids = list(session.scalars(stale))
    if stale_ids:
        session.execute(
            update(Order)
            .where(Order.id.in_(stale_ids), Order.lease_owner.is_not(None), Order.due_at <= now)
            .values(lease_owner=None)
            .execution_options(synchronize_session=False)
        )
    return recovered


def take_due_deliveries(
    session: Session, *, now: datetime, grace_s: float, limit: int
) -> list[str]:
    """Claim due pending webhook deliveries the same way."""
    due = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.due_at <= now)
        .limit(limit)
        .scalar_subquery()
    )
    stmt = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(due), WebhookDelivery.due_at <= now)
        .values(due_at=now + timedelta(seconds=grace_s))
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(stmt).scalars())


def purge_idempotency_keys(session: Session, *, now: datetime) -> int:
    """Forget idempotency keys past their retention."""
    stmt = delete(IdempotencyKey).where(IdempotencyKey.expires_at < now)
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    return int(result.rowcount or 0)
