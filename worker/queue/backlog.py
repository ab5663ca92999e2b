"""The backlog in the database: which callers have work due, their oldest due orders, claims.

The database is the queue of record; these are the queries the dispatcher feeds the broker
from. Every query here is an index range scan bounded by a ``LIMIT`` (see the indexes on
``orders``: ``(caller_id, status, id)``), so a backlog of 100,000 orders costs a pass no more
than a backlog of 100.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, bindparam, exists, or_, select, union_all, update
from sqlalchemy.orm import Session

from worker import pg_bulk
from worker.models import Caller, Order
from worker.states import RESTING

_RESTING = sorted(str(s) for s in RESTING)


def _waiting(caller_id: object, status: str) -> list[ColumnElement[bool]]:
    return [
        Order.caller_id == caller_id,
        Order.status == status,
        Order.lease_owner.is_(None),
        Order.due_at.is_not(None),
    ]


def callers_with_work(session: Session) -> list[str]:
    """Callers with any resting order scheduled (due now or later): the dispatcher's list.

    One index probe per caller and status (``EXISTS``), not a scan of the backlog.
    """
    has_work = [exists().where(*_waiting(Caller.id, status)) for status in _RESTING]
    stmt = select(Caller.id).where(or_(*has_work))
    return list(session.scalars(stmt))


def _due_statement() -> Select[tuple[str]]:
    parts = [
        select(Order.id)
        .where(*_waiting(bindparam("caller_id"), status), Order.due_at <= bindparam("now"))
        .order_by(Order.id)
        .limit(bindparam("limit"))
        .subquery()
        .select()
        for status in _RESTING
    ]
    merged = union_all(*parts).subquery()
    return select(merged.c.id).order_by(merged.c.id).limit(bindparam("limit"))


# Built once: the dispatcher runs these after every chunk, and building the union (and its
# cache key) each time was a tenth of a worker process's CPU at 0 ms latency (py-spy).
_DUE = _due_statement()
_SCHEDULED = [select(exists().where(*_waiting(bindparam("caller_id"), st))) for st in _RESTING]


def due_orders(session: Session, caller_id: str, *, now: datetime, limit: int) -> list[str]:
    """The caller's oldest ``limit`` orders that are due now, oldest first.

    One ``ORDER BY id LIMIT`` per resting status, merged: each walks the ``(caller_id,
    status, id)`` index and stops after ``limit`` matches.
    """
    if limit <= 0:
        return []
    params = {"caller_id": caller_id, "now": now, "limit": limit}
    return list(session.scalars(_DUE, params))


def has_scheduled(session: Session, caller_id: str) -> bool:
    """Whether the caller has any resting order scheduled (due now or later)."""
    return any(session.scalar(stmt, {"caller_id": caller_id}) for stmt in _SCHEDULED)


# ``claim`` on PostgreSQL: one text whatever the number of ids (the driver prepares it).
_CLAIM_PG = (
    f"UPDATE {Order.__tablename__} SET due_at = %(until)s WHERE id = ANY(%(ids)b::text[]) "
    "AND due_at <= %(now)s AND lease_owner IS NULL RETURNING id"
)


def claim(session: Session, ids: Sequence[str], *, now: datetime, grace_s: float) -> list[str]:
    """Take due, unleased orders of ``ids`` for enqueueing: their ``due_at`` moves a grace
    period ahead (if the message is lost, they are due again then). Compare-and-set: two
    dispatchers never both take one order."""
    if not ids:
        return []
    until = now + timedelta(seconds=grace_s)
    conn = session.connection()
    if pg_bulk.is_postgresql(conn):
        params = {"ids": sorted(ids), "now": now, "until": until}
        return [r[0] for r in conn.exec_driver_sql(_CLAIM_PG, params)]
    stmt = (
        update(Order)
        .where(Order.id.in_(sorted(ids)), Order.due_at <= now, Order.lease_owner.is_(None))
        .values(due_at=until)
        .returning(Order.id)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(stmt).scalars())


def weights(session: Session, callers: Iterable[str]) -> dict[str, int]:
    """The weights of ``callers`` (1 unless set otherwise)."""
    ids = list(callers)
    if not ids:
        return {}
    rows = session.execute(select(Caller.id, Caller.weight).where(Caller.id.in_(ids)))
    return {caller_id: int(weight or 1) for caller_id, weight in rows}


def callers_of(session: Session, ids: Iterable[str]) -> set[str]:
    """The callers owning ``ids``."""
    ids = list(ids)
    if not ids:
        return set()
    return set(session.scalars(select(Order.caller_id).where(Order.id.in_(ids)).distinct()))
