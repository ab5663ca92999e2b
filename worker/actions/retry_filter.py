"""Schedule a retry of every order matching a filter, or count them first (the dry run).

A large retry is worked through in chunks of ``RETRY_CHUNK``, one transaction each, and may be
spread over time so that it reaches the upstream at a bounded rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from worker.actions.actor import Actor
from worker.actions.moves import HELD_RULE
from worker.actions.store import schedule
from worker.actions.when import due_at
from worker.db import transaction
from worker.errors import WrongState
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.models import Order
from worker.states import RETRYABLE_BY_OPERATOR, Status
from worker.webhooks.outbox import record_deliveries

S = Status
RETRY_CHUNK = 500
"""Orders scheduled per transaction by a retry of a filter: row locks stay short."""
SAMPLE_SIZE = 10


@dataclass(frozen=True, slots=True)
class RetryFilter:
    """Which orders a retry touches (fields combine with AND). ``caller_id`` narrows an
    operator's retry to one caller; a caller's retry is always its own orders."""

    status: Status = Status.FAILED
    reason: str | None = None
    batch_id: str | None = None
    external_id: str | None = None
    caller_id: str | None = None


@dataclass(frozen=True, slots=True)
class DryRun:
    """What a retry would touch now: how many orders, and the first ids."""

    matched: int
    sample: list[str]

    def answer(self) -> dict[str, object]:
        """The wire answer of a dry run (nothing scheduled)."""
        return {"scheduled": 0, "matched": self.matched, "sample": self.sample}


def _check(flt: RetryFilter) -> None:
    if flt.status not in RETRYABLE_BY_OPERATOR:
        raise WrongState(f"only {sorted(RETRYABLE_BY_OPERATOR)} orders can be retried")


def matching_query(scope: str | None, flt: RetryFilter) -> Select[Order]:
    """The orders a retry of ``flt`` would touch, by id (``scope`` None: all callers).

    Only held ``submit_unknown`` orders match: one still being reconciled is not retryable.
    """
    stmt = select(Order).where(Order.status == str(flt.status)).order_by(Order.id)
    if flt.status == S.SUBMIT_UNKNOWN:
        stmt = stmt.where(Order.due_at.is_(None))
    if scope is not None:
        stmt = stmt.where(Order.caller_id == scope)
    if flt.reason is not None:
        stmt = stmt.where(Order.reason == flt.reason)
    if flt.batch_id is not None:
        stmt = stmt.where(Order.batch_id == flt.batch_id)
    if flt.external_id is not None:
        stmt = stmt.where(Order.external_id == flt.external_id)
    return stmt


def count_matching(
    session: Session, actor: Actor, flt: RetryFilter, *, sample_size: int = SAMPLE_SIZE
) -> DryRun:
    """How many orders a retry of ``flt`` by ``actor`` would touch now, and the first ids.
    Nothing is written.

    Raises:
        WrongState: orders of that status are never retried.
    """
    _check(flt)
    stmt = matching_query(actor.scope(flt.caller_id), flt)
    matched = session.scalar(
        select(func.count()).select_from(stmt.order_by(None).with_only_columns(Order.id).subquery())
    )
    sample = list(session.scalars(stmt.with_only_columns(Order.id).limit(sample_size)))
    return DryRun(int(matched or 0), sample)


def retry_matching(
    db_url: str,
    actor: Actor,
    flt: RetryFilter,
    *,
    at: datetime | None = None,
    dispatch: Dispatch | None = None,
    spread_per_s: float = 0.0,
) -> int:
    """Schedule a retry of every order matching ``flt`` in the actor's scope; returns how many
    were scheduled (orders that moved on meanwhile are skipped).

    With ``spread_per_s`` > 0 the k-th order is due ``k // spread_per_s`` seconds after ``at``
    (the first second's worth at ``at``), so a large retry reaches the upstream at that rate.

    Raises:
        InvalidInput: ``at`` is out of range.
        WrongState: the status is never retried; or ``submit_unknown``, whose held orders are
            only ever resolved one by one (the message says how many matched).
    """
    now = utcnow()
    when = due_at(at, now=now)
    _check(flt)
    if flt.status == S.SUBMIT_UNKNOWN:
        with transaction(db_url) as session:
            held = count_matching(session, actor, flt, sample_size=0).matched
        raise WrongState(f"{held} held order(s) matched and none was re-submitted: {HELD_RULE}")
    stmt = matching_query(actor.scope(flt.caller_id), flt)
    total = 0
    last_id = ""
    while True:
        with transaction(db_url) as session:
            targets = list(session.scalars(stmt.where(Order.id > last_id).limit(RETRY_CHUNK)))
            if not targets:
                break
            last_id = targets[-1].id
            scheduled, due_now, events = schedule(
                session,
                targets,
                at=when,
                now=now,
                actor=actor.label,
                first=total,
                spread_per_s=spread_per_s,
            )
            deliveries = record_deliveries(session, events)
        total += len(scheduled)
        if dispatch is not None:
            dispatch(due_now, deliveries, callers={o.caller_id for o in targets})
    return total
