"""What order transitions and sweeps do about their batches: complete, halt, notify, release.

``after_events`` runs inside the transaction that moved orders to a final state (the
pipeline's webhook sink), so a batch halts as soon as its threshold is crossed, before the
next chunk of its orders goes out. ``sweep`` catches what a transaction could not see (the
last two orders of a batch finishing at once in two transactions) and releases orders a
state change raced with. Every batch event is written to the outbox once
(``batches.notified``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.batches import HaltOn
from worker import pg_bulk
from worker.batches import rules
from worker.batches import store as batch_store
from worker.batches.view import batch_view
from worker.ids import utcnow
from worker.models import Batch, Order
from worker.repository import Event
from worker.webhooks.outbox import record_batch_event, record_deliveries

log = structlog.get_logger(__name__)
SWEEP_BATCHES = 200


def after_events(session: Session, events: Sequence[Event]) -> list[str]:
    """The pipeline's sink: order webhooks, then the batches whose orders just ended."""
    deliveries = record_deliveries(session, events)
    ended = sorted({e["order_id"] for e in events if e["to_status"] in rules.FINAL})
    if not ended:
        return deliveries
    conn = session.connection()
    if pg_bulk.is_postgresql(conn):
        # Only the batches that may halt or complete now: with an order still open and no
        # halt rule (most transactions of a running batch), nothing more to read.
        due = [r[0] for r in conn.exec_driver_sql(_DUE_PG, {"ids": ended, "final": _FINAL})]
        if not due:
            return deliveries
        stmt = select(Batch).where(Batch.id.in_(due)).order_by(Batch.id)
        batches = session.scalars(stmt).all()
    else:
        batch_ids = select(Order.batch_id).where(Order.id.in_(ended), Order.batch_id.is_not(None))
        batches = session.scalars(
            select(Batch).where(
                Batch.id.in_(batch_ids.scalar_subquery()),
                Batch.state == rules.RUNNING,
                Batch.completed_at.is_(None),
            )
        ).all()
    now = utcnow()
    for batch in batches:
        deliveries += check(session, batch, now=now)
    return deliveries


_FINAL = sorted(rules.FINAL)
# The running batches of the ended orders that may halt (a rule) or complete (no open order).
_DUE_PG = (
    f"SELECT b.id FROM {Batch.__tablename__} AS b WHERE b.id IN ("
    f"SELECT o.batch_id FROM {Order.__tablename__} AS o WHERE o.id = ANY(%(ids)b::text[])) "
    f"AND b.state = '{rules.RUNNING}' AND b.completed_at IS NULL "
    "AND (b.halt_on IS NOT NULL AND b.halt_on <> 'null'::jsonb OR NOT EXISTS ("
    f"SELECT 1 FROM {Order.__tablename__} AS p WHERE p.batch_id = b.id "
    "AND p.status <> ALL(%(final)b::text[])))"
)


def check(session: Session, batch: Batch, *, now: datetime) -> list[str]:
    """Halt or complete ``batch`` if its counts say so; returns webhook delivery ids."""
    if not batch.halt_on and _has_open_order(session, batch.id):
        # Nothing to halt on, and an order still open: it cannot be complete. One index
        # probe (orders by batch and status) instead of the counts, on every transaction
        # that ends orders of a running batch.
        return []
    summary = batch_store.summaries(session, [batch.id], now=now)[batch.id]
    counts = summary.counts
    final = rules.final_count(counts)
    halt_on = HaltOn.model_validate(batch.halt_on) if batch.halt_on else None
    if batch.state == rules.RUNNING and rules.may_halt(halt_on, counts):
        verdict = rules.halt_verdict(halt_on, final, batch_store.failures(session, batch.id))
        if verdict is not None:
            return halt(session, batch, verdict, now=now)
    if counts["total"] and final >= counts["total"]:
        return complete(session, batch, now=now)
    return []


def _has_open_order(session: Session, batch_id: str) -> bool:
    stmt = (
        select(Order.id)
        .where(Order.batch_id == batch_id, Order.status.not_in(sorted(rules.FINAL)))
        .limit(1)
    )
    return session.execute(stmt).first() is not None


def halt(session: Session, batch: Batch, verdict: rules.HaltVerdict, *, now: datetime) -> list[str]:
    """Stop the batch: its orders not yet submitted stay where they are until resumed."""
    halt = {
        "reason": verdict.reason,
        "status": verdict.status,
        "failed": verdict.failed,
        "final": verdict.final,
        "failed_share": round(verdict.share, 4),
        "at": now.isoformat().replace("+00:00", "Z"),
        "sample": batch_store.sample(
            session, batch.id, statuses=[verdict.status], reason=verdict.reason
        ),
    }
    moved = batch_store.move_state(
        session,
        batch.id,
        frm=[rules.RUNNING],
        to=rules.HALTED,
        now=now,
        actor="worker",
        reason=verdict.reason,
        detail={"failed": verdict.failed, "final": verdict.final},
        halt=halt,
    )
    if not moved:
        return []
    log.warning("batch_halted", batch_id=batch.id, reason=verdict.reason, failed=verdict.failed)
    return notify(session, batch.id, "batch.halted", now=now)


def complete(session: Session, batch: Batch, *, now: datetime) -> list[str]:
    """Every order is final: a running batch is ``completed`` (once, with its webhook)."""
    if batch.state == rules.RUNNING:
        moved = batch_store.move_state(
            session,
            batch.id,
            frm=[rules.RUNNING],
            to=rules.COMPLETED,
            now=now,
            actor="worker",
            completed_at=now,
        )
        return notify(session, batch.id, "batch.completed", now=now) if moved else []
    batch_store.mark_finished(session, batch.id, now=now)
    return []


def notify(session: Session, batch_id: str, etype: str, *, now: datetime) -> list[str]:
    """Write the batch event to the outbox, once per batch and type."""
    if not batch_store.mark_notified(session, batch_id, etype):
        return []
    batch = batch_store.find(session, batch_id, None)
    assert batch is not None
    data = batch_view(batch, batch_store.summaries(session, [batch_id], now=now)[batch_id])
    return record_batch_event(session, batch.caller_id, batch_id, etype, data)


def sweep(db_url: str) -> dict[str, Any]:
    """Complete, halt, hold back or release what the transitions left (beat-driven).

    Returns what it did, and the ids of orders released and deliveries written (to dispatch).
    """
    from worker.db import transaction

    done: dict[str, Any] = {"checked": 0, "released": [], "deliveries": [], "parked": 0}
    now = utcnow()
    with transaction(db_url) as session:
        batches = batch_store.open_batches(session, limit=SWEEP_BATCHES)
    for batch in batches:
        with transaction(db_url) as session:
            fresh = batch_store.find(session, batch.id, None)
            if fresh is None:
                continue
            done["checked"] += 1
            if fresh.state == rules.RUNNING:
                done["deliveries"] += check(session, fresh, now=now)
            elif fresh.state in (rules.HALTED, rules.AWAITING_APPROVAL):
                statuses = ["received", "previewed"] if fresh.state == rules.HALTED else []
                statuses = statuses or ["previewed"]
                reason = rules.HOLD_REASONS[fresh.state]
                done["parked"] += batch_store.park(
                    session, fresh.id, reason=reason, statuses=statuses
                )
                _maybe_total(session, fresh)
            elif fresh.state == rules.CANCELLED:
                events = batch_store.cancel_orders(session, fresh.id, now=now, actor="sweeper")
                done["deliveries"] += record_deliveries(session, events)
                summary = batch_store.summaries(session, [fresh.id], now=now)[fresh.id]
                if rules.final_count(summary.counts) >= summary.counts["total"]:
                    batch_store.mark_finished(session, fresh.id, now=now)
    with transaction(db_url) as session:
        for batch_id in batch_store.due_for_release(session, limit=SWEEP_BATCHES):
            done["released"] += batch_store.release(session, batch_id, now=now)
    return done


def _maybe_total(session: Session, batch: Batch) -> None:
    """Price an awaiting-approval batch once every order is previewed (or final)."""
    if batch.state != rules.AWAITING_APPROVAL or batch.totals is not None:
        return
    now = utcnow()
    counts = batch_store.summaries(session, [batch.id], now=now)[batch.id].counts
    if rules.shown_state(batch.state, counts) != rules.AWAITING_APPROVAL:
        return
    batch_store.set_totals(session, batch.id, batch_store.compute_totals(session, batch.id))
