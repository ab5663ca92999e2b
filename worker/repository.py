"""Order persistence: every status change is a compare-and-set plus one history row.

A move only happens ``WHERE id = :id AND status = :expected AND lease_owner <=> :owner``, so two
workers racing on one order cannot both move it; the loser sees ``False`` and walks away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from worker import pg_bulk
from worker.models import ORDER_EVENTS as _EVENTS
from worker.models import ORDERS as _ORDERS
from worker.models import Batch, Order, OrderEvent, StoredOrder
from worker.states import RESTING, Status, check_move

S = Status
# What a batch holds back, by its state: no submit while awaiting approval, nothing while
# halted or cancelled (the reason the held order carries; see worker.batches).
_HOLDS: dict[Status, dict[str, str]] = {
    S.PREVIEWING: {"halted": "batch_halted", "cancelled": "batch_cancelled"},
    S.SUBMITTING: {
        "awaiting_approval": "awaiting_approval",
        "halted": "batch_halted",
        "cancelled": "batch_cancelled",
    },
}
HOLD_REASONS: frozenset[str] = frozenset(_HOLDS[S.SUBMITTING].values())


@dataclass(slots=True)
class Move:
    """One intended transition of one order, with what to record about it."""

    order_id: str
    frm: Status
    to: Status
    values: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    message: str | None = None
    status_code: int | None = None
    via: Status | None = None
    """An intermediate state passed through in the same statement (two history rows)."""

    def legs(self) -> list[tuple[Status, Status]]:
        if self.via is None:
            return [(self.frm, self.to)]
        return [(self.frm, self.via), (self.via, self.to)]


Event = dict[str, Any]
"""A history row about to be written (the ``order_events`` columns)."""


def _event_rows(move: Move, attempt: int, *, now: datetime, actor: str | None) -> list[Event]:
    return [
        {
            "order_id": move.order_id,
            "at": now,
            "from_status": str(frm),
            "to_status": str(to),
            "attempt": attempt,
            "reason": move.reason if to == move.to else None,
            "status_code": move.status_code if to == move.to else None,
            "message": (move.message or None) and move.message[:2000] if to == move.to else None,
            "actor": actor,
        }
        for frm, to in move.legs()
    ]


def apply_moves(
    session: Session,
    moves: Sequence[Move],
    *,
    now: datetime,
    owner: str | None,
    actor: str | None = None,
) -> list[Event]:
    """Apply each move as a compare-and-set; record history for those that won.

    Returns the history rows written (one per leg of each move that won). ``owner`` is the
    lease the caller holds (None: no lease).
    """
    if not moves:
        return []
    ids = [m.order_id for m in moves]
    rows = session.execute(select(_ORDERS.c.id, _ORDERS.c.attempts).where(_ORDERS.c.id.in_(ids)))
    attempts = {order_id: n for order_id, n in rows}
    return apply_moves_bulk(session, moves, now=now, owner=owner, attempts=attempts, actor=actor)


def apply_moves_bulk(
    session: Session,
    moves: Sequence[Move],
    *,
    now: datetime,
    owner: str | None,
    attempts: Mapping[str, int],
    actor: str | None = None,
) -> list[Event]:
    """``apply_moves`` for many orders at once: one statement per kind of move.

    The same compare-and-set, without a round trip per order: on PostgreSQL one
    ``UPDATE ... FROM unnest(...) RETURNING id`` (the winners are the ids it returns), on
    SQLite an ``executemany`` (when fewer rows matched than were sent, the winners are those
    now carrying this call's status and ``updated_at``). ``attempts`` gives each order's
    attempt count for its history rows.
    """
    moves = sorted(moves, key=lambda m: m.order_id)
    moves = _hold_previews(moves, _lock_and_holds(session, moves))
    groups: dict[tuple[str, ...], list[tuple[Move, dict[str, Any]]]] = {}
    for move in moves:
        for frm, to in move.legs():
            check_move(frm, to)
        values = {"reason": move.reason, "message": move.message, **move.values}
        groups.setdefault(tuple(sorted(values)), []).append((move, values))
    conn = session.connection()
    write = _update_group_pg if pg_bulk.is_postgresql(conn) else _update_group
    won = [m for keys, group in groups.items() for m in write(session, keys, group, now, owner)]
    events = [
        e for m in won for e in _event_rows(m, attempts.get(m.order_id, 0), now=now, actor=actor)
    ]
    if events:
        if pg_bulk.is_postgresql(conn):
            pg_bulk.insert_many(conn, _EVENTS, events)
        else:
            session.execute(insert(_EVENTS), events)
    return events


Group = list[tuple[Move, dict[str, Any]]]
"""Moves that set the same columns, each with the values it sets."""


def _update_group(
    session: Session, keys: tuple[str, ...], group: Group, now: datetime, owner: str | None
) -> list[Move]:
    """One ``executemany`` for the group; returns the moves that won."""
    owner_clause = (
        _ORDERS.c.lease_owner.is_(None)
        if owner is None
        else _ORDERS.c.lease_owner == bindparam("w_owner")
    )
    stmt = (
        update(_ORDERS)
        .where(
            _ORDERS.c.id == bindparam("w_id"),
            _ORDERS.c.status == bindparam("w_frm"),
            owner_clause,
        )
        .values(
            status=bindparam("w_to"),
            updated_at=bindparam("w_now"),
            **{k: bindparam(f"v_{k}") for k in keys},
        )
    )
    rows = [
        {
            "w_id": m.order_id,
            "w_frm": str(m.frm),
            "w_to": str(m.to),
            "w_now": now,
            "w_owner": owner,
            **{f"v_{k}": v for k, v in values.items()},
        }
        for m, values in group
    ]
    result: CursorResult[Any] = session.execute(stmt, rows)  # type: ignore[assignment]
    if result.rowcount == len(rows):
        return [m for m, _ in group]
    found = session.execute(
        select(_ORDERS.c.id, _ORDERS.c.status, _ORDERS.c.updated_at).where(
            _ORDERS.c.id.in_([m.order_id for m, _ in group])
        )
    ).all()
    current = {oid: (status, updated) for oid, status, updated in found}
    return [m for m, _ in group if current.get(m.order_id) == (str(m.to), now)]


def _update_group_pg(
    session: Session, keys: tuple[str, ...], group: Group, now: datetime, owner: str | None
) -> list[Move]:
    """The group in one ``UPDATE ... FROM unnest(...) RETURNING id`` (see ``pg_bulk``)."""
    rows = [
        {
            "w_id": m.order_id,
            "w_frm": str(m.frm),
            "w_to": str(m.to),
            **{f"v_{k}": v for k, v in values.items()},
        }
        for m, values in group
    ]
    matched = set(
        pg_bulk.update_many(
            session.connection(),
            _ORDERS,
            rows,
            match={"id": "w_id", "status": "w_frm"},
            set_from={"status": "w_to", **{k: f"v_{k}" for k in keys}},
            set_to={"updated_at": now},
            where="t.lease_owner IS NULL" if owner is None else "t.lease_owner = %(w_owner)s",
            params={"w_owner": owner},
        )
    )
    return [m for m, _ in group if m.order_id in matched]


def claim(
    session: Session,
    ids: Iterable[str],
    *,
    frm: Status,
    to: Status,
    now: datetime,
    owner: str,
    lease_until: datetime,
    actor: str | None = None,
) -> list[Event]:
    """Move every unleased order of ``ids`` in state ``frm`` to ``to`` under lease ``owner``.

    One statement for the whole set; counts one attempt per order. Returns the history rows.
    """
    check_move(frm, to)
    ids = list(ids)
    if ids and to in _HOLDS:
        held = held_by_batch(session, ids, step=to)
        if held:
            _park(session, held, status=frm)
            ids = [i for i in ids if i not in held]
    if not ids:
        return []
    conn = session.connection()
    pg = pg_bulk.is_postgresql(conn)
    if pg:
        values: dict[str, Any] = {"ids": sorted(ids), "frm": str(frm), "to": str(to)}
        values |= {"owner": owner, "until": lease_until, "now": now}
        rows = [(r[0], r[1]) for r in conn.exec_driver_sql(_CLAIM_PG, values)]
    else:
        c = _ORDERS.c
        stmt = (
            update(_ORDERS)
            .where(c.id.in_(ids), c.status == str(frm), c.lease_owner.is_(None))
            .values(
                status=str(to),
                lease_owner=owner,
                due_at=lease_until,
                updated_at=now,
                attempts=c.attempts + 1,
            )
            .returning(c.id, c.attempts)
        )
        rows = [(r[0], r[1]) for r in session.execute(stmt)]
    events = [
        e for oid, n in rows for e in _event_rows(Move(oid, frm, to), n, now=now, actor=actor)
    ]
    if events:
        if pg:
            pg_bulk.insert_many(conn, _EVENTS, events)
        else:
            session.execute(insert(_EVENTS), events)
    return events


# The same on PostgreSQL, one text whatever the number of ids (the driver prepares it).
_CLAIM_PG = (
    f"UPDATE {_ORDERS.name} SET status = %(to)s, lease_owner = %(owner)s, due_at = %(until)s, "
    "updated_at = %(now)s, attempts = attempts + 1 "
    "WHERE id = ANY(%(ids)b::text[]) AND status = %(frm)s AND lease_owner IS NULL "
    "RETURNING id, attempts"
)
_HELD_PG = (
    f"SELECT o.id, b.state FROM {_ORDERS.name} AS o "
    f"JOIN {Batch.__tablename__} AS b ON b.id = o.batch_id "
    "WHERE o.id = ANY(%(ids)b::text[]) AND b.state = ANY(%(states)b::text[])"
)


def held_by_batch(session: Session, ids: Sequence[str], *, step: Status) -> dict[str, str]:
    """``{order id: hold reason}`` for the orders of ``ids`` their batch holds back from
    ``step`` (previewing or submitting)."""
    holds = _HOLDS.get(step)
    if not holds or not ids:
        return {}
    conn = session.connection()
    if pg_bulk.is_postgresql(conn):
        params = {"ids": sorted(ids), "states": sorted(holds)}
        return {oid: holds[state] for oid, state in conn.exec_driver_sql(_HELD_PG, params)}
    rows = session.execute(
        select(Order.id, Batch.state)
        .join(Batch, Batch.id == Order.batch_id)
        .where(Order.id.in_(list(ids)), Batch.state.in_(list(holds)))
    )
    return {oid: holds[state] for oid, state in rows}


def _park(session: Session, held: Mapping[str, str], *, status: Status) -> None:
    """Rest held orders where they are (no status change): due never, until released."""
    stmt = (
        update(_ORDERS)
        .where(
            _ORDERS.c.id == bindparam("p_id"),
            _ORDERS.c.status == str(status),
            _ORDERS.c.lease_owner.is_(None),
        )
        .values(due_at=None, next_attempt_at=None, reason=bindparam("p_reason"))
    )
    session.execute(stmt, [{"p_id": oid, "p_reason": r} for oid, r in sorted(held.items())])


# One statement, text built once (this runs in every transaction that applies answers).
_LOCK_AND_HOLDS = (
    f"SELECT o.id, b.state FROM {_ORDERS.name} AS o "
    f"LEFT JOIN {Batch.__tablename__} AS b ON b.id = o.batch_id "
    "WHERE o.id = ANY(%(ids)b::text[]) ORDER BY o.id FOR UPDATE OF o"
)


def _lock_and_holds(session: Session, moves: Sequence[Move]) -> dict[str, str]:
    """Take the row locks of the moves' orders in id order (PostgreSQL; SQLite locks the whole
    file) and read, in the same statement, the batch holds of those whose preview goes on to
    ``submitting`` (``{order id: hold reason}``).

    Every multi-row write locks in the same order, so two transactions on overlapping orders
    queue behind each other instead of deadlocking (a chunk's bulk moves are several
    statements, and another worker or the sweeper may hold some of the same rows).
    """
    going = {m.order_id for m in moves if m.via == S.PREVIEWED and m.to == S.SUBMITTING}
    ids = sorted({m.order_id for m in moves})
    conn = session.connection()
    if len(ids) > 1 and pg_bulk.is_postgresql(conn):
        holds = _HOLDS[S.SUBMITTING]
        rows = conn.exec_driver_sql(_LOCK_AND_HOLDS, {"ids": ids})
        return {oid: holds[state] for oid, state in rows if oid in going and state in holds}
    return held_by_batch(session, sorted(going), step=S.SUBMITTING)


def _hold_previews(moves: list[Move], held: Mapping[str, str]) -> list[Move]:
    """A preview whose batch now holds its orders back stops at ``previewed`` (released, due
    never) instead of going on to ``submitting``: nothing is submitted that was not approved."""
    if not held:
        return moves
    out: list[Move] = []
    for m in moves:
        reason = held.get(m.order_id)
        if reason is None or m.via != S.PREVIEWED:
            out.append(m)
            continue
        values = {
            **m.values,
            "due_at": None,
            "next_attempt_at": None,
            "lease_owner": None,
            "reason": reason,
        }
        out.append(Move(m.order_id, m.frm, S.PREVIEWED, values, reason=reason))
    return out


def lease(
    session: Session, ids: Iterable[str], *, status: Status, owner: str, lease_until: datetime
) -> list[str]:
    """Take the lease of unleased orders in ``status`` without changing it (no history row)."""
    ids = list(ids)
    if not ids:
        return []
    c = _ORDERS.c
    stmt = (
        update(_ORDERS)
        .where(c.id.in_(ids), c.status == str(status), c.lease_owner.is_(None))
        .values(lease_owner=owner, due_at=lease_until)
        .returning(c.id)
    )
    return list(session.execute(stmt).scalars())


def release(session: Session, order_id: str, *, now: datetime, owner: str, **values: Any) -> bool:
    """Give back the lease (same status, no history row), setting ``values``."""
    stmt = (
        update(_ORDERS)
        .where(_ORDERS.c.id == order_id, _ORDERS.c.lease_owner == owner)
        .values(lease_owner=None, updated_at=now, **values)
    )
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    return bool(result.rowcount)


def load(session: Session, ids: Iterable[str]) -> list[StoredOrder]:
    """The orders of ``ids`` (missing ids are skipped), in creation order, as plain data
    (a Core read: ORM objects cost twice as much, and a run only reads them)."""
    ids = list(ids)
    if not ids:
        return []
    rows = session.execute(select(_ORDERS).where(_ORDERS.c.id.in_(ids)).order_by(_ORDERS.c.id))
    return [StoredOrder(**row._mapping) for row in rows]


def history(session: Session, order_id: str) -> list[OrderEvent]:
    """The order's status changes, oldest first."""
    stmt = select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
    return list(session.scalars(stmt))


def renew_leases(session: Session, ids: Iterable[str], *, owner: str, lease_until: datetime) -> int:
    """Extend the lease of the orders of ``ids`` that ``owner`` still holds (a heartbeat)."""
    ids = list(ids)
    if not ids:
        return 0
    stmt = (
        update(_ORDERS)
        .where(_ORDERS.c.id.in_(ids), _ORDERS.c.lease_owner == owner)
        .values(due_at=lease_until)
    )
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    return int(result.rowcount or 0)


def defer(
    session: Session, ids: Iterable[str], *, at: datetime, due_at: datetime, reason: str
) -> list[str]:
    """Push unleased resting orders of ``ids`` back to ``at`` (no status change, no history)."""
    ids = list(ids)
    if not ids:
        return []
    stmt = (
        update(Order)
        .where(
            Order.id.in_(ids),
            Order.lease_owner.is_(None),
            Order.status.in_([str(st) for st in RESTING]),
        )
        .values(next_attempt_at=at, due_at=due_at, reason=reason)
        .returning(Order.id)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(stmt).scalars())


def undefer(session: Session, *, reason: str, now: datetime, within_s: float) -> int:
    """Make due now the unleased resting orders deferred with ``reason`` to at most
    ``within_s`` ahead (the index on ``due_at`` bounds the search); returns how many."""
    stmt = (
        update(Order)
        .where(
            Order.due_at > now,
            Order.due_at <= now + timedelta(seconds=within_s),
            Order.reason == reason,
            Order.lease_owner.is_(None),
            Order.status.in_([str(st) for st in RESTING]),
        )
        .values(next_attempt_at=now, due_at=now)
        .execution_options(synchronize_session=False)
    )
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    return int(result.rowcount or 0)


def sharing_external_ids(
    session: Session, external_ids: Iterable[str], *, exclude: Iterable[str]
) -> dict[str, list[tuple[str, str | None]]]:
    """Our orders (any caller) other than ``exclude`` that sent one of ``external_ids``
    upstream (their own ``external_id``, or their id when they had none), with the upstream
    order each is tied to: ``{external_id: [(order id, upstream id or None)]}``."""
    wanted = sorted(set(external_ids))
    if not wanted:
        return {}
    excluded = set(exclude)
    rows = session.execute(
        select(Order.id, Order.external_id, Order.upstream_id).where(
            or_(
                Order.external_id.in_(wanted),
                and_(Order.external_id.is_(None), Order.id.in_(wanted)),
            )
        )
    )
    out: dict[str, list[tuple[str, str | None]]] = {}
    for order_id, external_id, upstream_id in rows:
        if order_id not in excluded:
            out.setdefault(external_id or order_id, []).append((order_id, upstream_id))
    return out


def orders_tied_to(session: Session, upstream_id: str, *, exclude: str) -> list[str]:
    """Our orders (any caller) other than ``exclude`` already tied to upstream ``upstream_id``.

    On PostgreSQL it first takes a transaction lock on ``upstream_id``, so two operators tying
    two orders to one upstream order at once queue, and the second sees the first's tie
    (SQLite: ``BEGIN IMMEDIATE`` already serialises the transactions).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(upstream_id))))
    stmt = select(Order.id).where(Order.upstream_id == upstream_id, Order.id != exclude)
    return sorted(session.scalars(stmt))


def known_upstream_id(session: Session) -> str | None:
    """The upstream id of a recently created order (the breaker's fallback probe reads it)."""
    return session.scalar(
        select(Order.upstream_id)
        .where(Order.upstream_id.is_not(None))
        .order_by(Order.updated_at.desc())
        .limit(1)
    )
