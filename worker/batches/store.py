"""Batches in the database: create, read (indexed, never a scan of the orders), act.

A batch's counts are the sums of its ``batch_counts`` rows, which triggers on ``orders``
keep in the transaction of every insert, status change and delete (migration 0005_batches).
Orders held back by their batch (awaiting approval, halted, cancelled) rest with ``due_at``
NULL and the hold's ``reason``: the dispatcher and the sweeper never pick them up.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    CursorResult,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from schemas.batches import BatchOptions
from worker import repository as repo
from worker.batches import rules
from worker.models import Batch, BatchCount, BatchEvent, BatchFinal, Order
from worker.repository import Event, Move
from worker.states import Status

S = Status
BUCKET_S = 5
"""Width of a ``batch_finals`` bucket (the trigger's); the rate looks at 12 of them."""
RATE_KEY = "~recent_finals"
CANCEL_CHUNK = 500
TOTALS_PAGE = 1000


@dataclass(slots=True)
class Summary:
    """What the counts rows say about one batch."""

    counts: dict[str, int] = field(default_factory=lambda: {"total": 0})
    first_final_at: datetime | None = None
    last_final_at: datetime | None = None
    recent_finals: int = 0


def create(
    session: Session, *, batch_id: str, caller_id: str, options: BatchOptions, now: datetime
) -> None:
    """The batch row, in the transaction that inserts its orders."""
    state = rules.initial_state(options)
    session.execute(
        insert(Batch).values(
            id=batch_id,
            caller_id=caller_id,
            created_at=now,
            mode=options.mode,
            state=state,
            state_at=now,
            halt_on=options.halt_on.model_dump() if options.halt_on else None,
        )
    )
    _event(session, batch_id, None, state, now=now, actor="intake")


def find(session: Session, batch_id: str, caller_id: str | None) -> Batch | None:
    """The batch (the caller's own, unless ``caller_id`` is None: an operator)."""
    stmt = select(Batch).where(Batch.id == batch_id)
    if caller_id is not None:
        stmt = stmt.where(Batch.caller_id == caller_id)
    return session.scalar(stmt.execution_options(populate_existing=True))


def page(
    session: Session, caller_id: str | None, *, limit: int, before_id: str | None
) -> list[Batch]:
    """Batches newest first (ids are time-ordered), after the cursor ``before_id``."""
    stmt = select(Batch).order_by(Batch.id.desc()).limit(limit)
    if caller_id is not None:
        stmt = stmt.where(Batch.caller_id == caller_id)
    if before_id is not None:
        stmt = stmt.where(Batch.id < before_id)
    return list(session.scalars(stmt))


def summaries(session: Session, ids: Sequence[str], *, now: datetime) -> dict[str, Summary]:
    """Counts by status (and ``total``), first and last final times, and the orders that
    became final in the last minute: one statement over the batches' counts rows."""
    out = {batch_id: Summary() for batch_id in ids}
    if not ids:
        return out
    since = int(now.timestamp() - rules.RATE_WINDOW_S) // BUCKET_S + 1
    counts = select(
        BatchCount.batch_id,
        BatchCount.status,
        func.sum(BatchCount.n),
        func.min(BatchCount.first_at),
        func.max(BatchCount.last_at),
    ).where(BatchCount.batch_id.in_(ids))
    recent = select(
        BatchFinal.batch_id,
        literal(RATE_KEY),
        func.sum(BatchFinal.n),
        literal(None),
        literal(None),
    ).where(BatchFinal.batch_id.in_(ids), BatchFinal.bucket >= since)
    stmt: CompoundSelect[str, str, int | None, datetime | None, datetime | None] = union_all(
        counts.group_by(BatchCount.batch_id, BatchCount.status),
        recent.group_by(BatchFinal.batch_id),
    )
    for batch_id, status, n, first_at, last_at in session.execute(stmt):
        summary = out[batch_id]
        n = int(n or 0)
        if status == RATE_KEY:
            summary.recent_finals = n
            continue
        if n:
            summary.counts[status] = n
            summary.counts["total"] += n
        if status in rules.FINAL:
            first_at, last_at = _utc(first_at), _utc(last_at)
            if first_at and (summary.first_final_at is None or first_at < summary.first_final_at):
                summary.first_final_at = first_at
            if last_at and (summary.last_final_at is None or last_at > summary.last_final_at):
                summary.last_final_at = last_at
    return out


def _utc(value: Any) -> datetime | None:
    """A timestamp out of a union (SQLite hands back text there)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def count_orders(session: Session, batch_id: str) -> dict[str, int]:
    """Counts by status straight from the orders (a scan: for checks and tests only)."""
    rows = session.execute(
        select(Order.status, func.count()).where(Order.batch_id == batch_id).group_by(Order.status)
    )
    out = {status: int(n) for status, n in rows}
    return {"total": sum(out.values()), **out}


def move_state(
    session: Session,
    batch_id: str,
    *,
    frm: Collection[str],
    to: str,
    now: datetime,
    actor: str,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """Compare-and-set the batch's state from one of ``frm`` to ``to``, with a history row."""
    current = session.scalar(select(Batch.state).where(Batch.id == batch_id))
    stmt = (
        update(Batch)
        .where(Batch.id == batch_id, Batch.state.in_(list(frm)))
        .values(state=to, state_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    if not result.rowcount:
        return False
    _event(session, batch_id, current, to, now=now, actor=actor, reason=reason, detail=detail)
    return True


def _event(
    session: Session,
    batch_id: str,
    frm: str | None,
    to: str,
    *,
    now: datetime,
    actor: str,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.execute(
        insert(BatchEvent).values(
            batch_id=batch_id,
            at=now,
            from_state=frm,
            to_state=to,
            actor=actor,
            reason=reason,
            detail=detail,
        )
    )


def history(session: Session, batch_id: str) -> list[BatchEvent]:
    stmt = select(BatchEvent).where(BatchEvent.batch_id == batch_id).order_by(BatchEvent.id)
    return list(session.scalars(stmt))


def mark_notified(session: Session, batch_id: str, event_type: str) -> bool:
    """Record that ``event_type`` went to the outbox; False if it already had (once per batch)."""
    notified = session.scalar(select(Batch.notified).where(Batch.id == batch_id).with_for_update())
    if notified and event_type in notified:
        return False
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(notified=[*(notified or []), event_type])
        .execution_options(synchronize_session=False)
    )
    return True


def park(session: Session, batch_id: str, *, reason: str, statuses: Collection[str]) -> int:
    """Hold back the batch's unleased orders in ``statuses`` (no status change)."""
    stmt = (
        update(Order)
        .where(
            Order.batch_id == batch_id,
            Order.status.in_(list(statuses)),
            Order.lease_owner.is_(None),
            Order.due_at.is_not(None),
        )
        .values(due_at=None, next_attempt_at=None, reason=reason)
        .execution_options(synchronize_session=False)
    )
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    return int(result.rowcount or 0)


def release(session: Session, batch_id: str, *, now: datetime) -> list[str]:
    """Let the batch's held-back orders go on (due now); returns their ids."""
    stmt = (
        update(Order)
        .where(
            Order.batch_id == batch_id,
            Order.status.in_([str(S.RECEIVED), str(S.PREVIEWED)]),
            Order.due_at.is_(None),
            Order.lease_owner.is_(None),
            Order.reason.in_(list(rules.HOLD_REASONS.values())),
        )
        .values(due_at=now, next_attempt_at=None, reason=None)
        .returning(Order.id)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(stmt).scalars())


def cancel_orders(session: Session, batch_id: str, *, now: datetime, actor: str) -> list[Event]:
    """Cancel the batch's orders not yet submitted and not held by a worker (one chunk).

    Returns the history rows; call again until it returns none.
    """
    rows = session.execute(
        select(Order.id, Order.status, Order.attempts)
        .where(
            Order.batch_id == batch_id,
            Order.status.in_([str(S.RECEIVED), str(S.PREVIEWED)]),
            Order.lease_owner.is_(None),
        )
        .order_by(Order.id)
        .limit(CANCEL_CHUNK)
    ).all()
    values = {"due_at": None, "next_attempt_at": None}
    moves = [
        Move(oid, S(st), S.CANCELLED, dict(values), reason="batch_cancelled") for oid, st, _ in rows
    ]
    attempts = {oid: n for oid, _, n in rows}
    return repo.apply_moves_bulk(
        session, moves, now=now, owner=None, attempts=attempts, actor=actor
    )


def failures(session: Session, batch_id: str) -> list[tuple[str, str | None, int]]:
    """``(status, reason, count)`` of the batch's failed and rejected orders."""
    rows = session.execute(
        select(Order.status, Order.reason, func.count())
        .where(Order.batch_id == batch_id, Order.status.in_(list(rules.FAILED)))
        .group_by(Order.status, Order.reason)
    )
    return [(status, reason, int(n)) for status, reason, n in rows]


def sample(
    session: Session, batch_id: str, *, statuses: Collection[str], reason: str | None
) -> list[dict[str, Any]]:
    """A few orders of the batch in ``statuses`` with ``reason`` (None: any reason)."""
    stmt = select(Order.id, Order.status, Order.reason, Order.message).where(
        Order.batch_id == batch_id, Order.status.in_(list(statuses))
    )
    if reason is not None:
        stmt = stmt.where(Order.reason == reason)
    rows = session.execute(stmt.order_by(Order.batch_index).limit(rules.SAMPLE_SIZE))
    return [
        {"order_id": oid, "status": st, "reason": rsn, "message": (msg or None) and msg[:500]}
        for oid, st, rsn, msg in rows
    ]


def compute_totals(session: Session, batch_id: str) -> dict[str, Any]:
    """What the batch's previews add up to, per currency, and its preview failures.

    Reads the previews page by page (keyset on the batch index): memory stays flat.
    """
    by_currency: dict[str, Decimal] = {}
    priced = unpriced = 0
    after = -1
    while True:
        rows = session.execute(
            select(Order.batch_index, Order.preview)
            .where(
                Order.batch_id == batch_id,
                Order.batch_index > after,
                Order.preview.is_not(None),
            )
            .order_by(Order.batch_index)
            .limit(TOTALS_PAGE)
        ).all()
        if not rows:
            break
        for _index, preview in rows:
            if rules.add_totals(by_currency, rules.preview_amount(preview)):
                priced += 1
            else:
                unpriced += 1
        after = rows[-1][0]
    failed = session.execute(
        select(Order.id, Order.batch_index, Order.status, Order.reason, Order.message)
        .where(
            Order.batch_id == batch_id,
            Order.status.in_(list(rules.FAILED)),
            Order.preview.is_(None),
        )
        .order_by(Order.batch_index)
    ).all()
    return {
        "by_currency": {c: str(v) for c, v in sorted(by_currency.items())},
        "priced": priced,
        "unpriced": unpriced,
        "preview_failures": len(failed),
        "failures": [
            {
                "order_id": oid,
                "index": index,
                "status": st,
                "reason": reason,
                "message": (msg or None) and msg[:500],
            }
            for oid, index, st, reason, msg in failed[:100]
        ],
    }


def due_for_release(session: Session, *, limit: int) -> list[str]:
    """Running batches that still have held-back orders (a state change raced a hold)."""
    stmt = (
        select(Batch.id)
        .where(Batch.state == rules.RUNNING)
        .where(
            select(Order.id)
            .where(
                Order.batch_id == Batch.id,
                Order.status.in_([str(S.RECEIVED), str(S.PREVIEWED)]),
                Order.due_at.is_(None),
                Order.reason.in_(list(rules.HOLD_REASONS.values())),
            )
            .exists()
        )
        .limit(limit)
    )
    return list(session.scalars(stmt))


def open_batches(session: Session, *, limit: int) -> list[Batch]:
    """Batches a sweep still looks at (oldest first)."""
    stmt = (
        select(Batch)
        .where(Batch.state.in_([*rules.OPEN_STATES, rules.CANCELLED]), Batch.completed_at.is_(None))
        .order_by(Batch.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def mark_finished(session: Session, batch_id: str, *, now: datetime) -> None:
    """Every order of a batch that is not ``running`` (cancelled) is final: sweeps stop here."""
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.completed_at.is_(None))
        .values(completed_at=now)
        .execution_options(synchronize_session=False)
    )


def set_totals(session: Session, batch_id: str, totals: dict[str, Any]) -> None:
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.totals.is_(None))
        .values(totals=totals)
        .execution_options(synchronize_session=False)
    )
