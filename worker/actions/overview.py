"""What an operator reads before acting: every caller's orders by status (a read, no action).

One ``GROUP BY`` over ``ix_orders_caller_status`` (index-only on PostgreSQL); callers with no
order are listed with empty counts, operators are not callers and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.intake.callers import ROLE_CALLER
from worker.models import Caller, Order


@dataclass(frozen=True, slots=True)
class CallerCounts:
    id: str
    name: str
    revoked: bool
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def counts_by_caller(session: Session) -> list[CallerCounts]:
    """Every caller (revoked ones too: their orders remain), by name, with its orders' counts
    by status."""
    callers = session.execute(
        select(Caller.id, Caller.name, Caller.revoked_at)
        .where(Caller.role == ROLE_CALLER)
        .order_by(Caller.name)
    ).all()
    out = {cid: CallerCounts(cid, name, revoked is not None) for cid, name, revoked in callers}
    rows = session.execute(
        select(Order.caller_id, Order.status, func.count()).group_by(Order.caller_id, Order.status)
    ).all()
    for caller_id, status, n in rows:
        if caller_id in out:
            out[caller_id].counts[status] = int(n)
    return list(out.values())
