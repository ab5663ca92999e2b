"""Listing a caller's orders page by page, newest first, with an opaque cursor.

Order ids are time-ordered (``worker.ids.new_id``), so the list is ``ORDER BY id DESC`` and the
cursor is the URL-safe base64 of the last id returned; the next page is ``id < cursor``. Orders
created while a caller pages through are newer than the first page and never shift, repeat or
hide the orders of later pages (they show up on a fresh listing).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from worker.api.deps import ID_PATTERN
from worker.api.errors import ApiError
from worker.api.order_reads import VIEW_COLUMNS
from worker.intake.store import find_for_caller
from worker.models import Order, OrderEvent
from worker.views import event_view, order_view


def encode_cursor(last_id: str) -> str:
    """The opaque cursor after ``last_id``."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


EVENT_ID = re.compile(r"^[0-9]{1,18}$")


def decode_cursor(cursor: str, pattern: re.Pattern[str] = ID_PATTERN) -> str:
    """The id a cursor stands for; 422 naming ``cursor`` if it is not one of ours."""
    try:
        last_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        last_id = ""
    if not pattern.match(last_id):
        raise ApiError(
            422,
            "cursor: not a cursor from a previous page",
            [{"field": "cursor", "message": "invalid cursor"}],
        )
    return last_id


@dataclass(frozen=True, slots=True)
class OrderFilter:
    """What to list; every field is optional and they combine with AND."""

    statuses: tuple[str, ...] = ()
    external_id: str | None = None
    batch_id: str | None = None
    created_since: datetime | None = None
    created_before: datetime | None = None


def _query(caller_id: str, flt: OrderFilter) -> Select[Any]:
    # Rows of the view's columns (no ORM objects): the page is shaped and serialised as is.
    stmt = select(*VIEW_COLUMNS).where(Order.caller_id == caller_id)
    if flt.statuses:
        stmt = stmt.where(Order.status.in_(flt.statuses))
    if flt.external_id is not None:
        stmt = stmt.where(Order.external_id == flt.external_id)
    if flt.batch_id is not None:
        stmt = stmt.where(Order.batch_id == flt.batch_id)
    if flt.created_since is not None:
        stmt = stmt.where(Order.created_at >= flt.created_since)
    if flt.created_before is not None:
        stmt = stmt.where(Order.created_at < flt.created_before)
    return stmt


def order_page(
    session: Session, caller_id: str, flt: OrderFilter, limit: int, after_id: str | None
) -> dict[str, Any]:
    """``{"items": [order view, ...], "next_cursor": str | None}``, newest first, starting
    after ``after_id`` (a decoded cursor)."""
    stmt = _query(caller_id, flt)
    if after_id is not None:
        stmt = stmt.where(Order.id < after_id)
    rows = list(session.execute(stmt.order_by(Order.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [order_view(o) for o in rows],
        "next_cursor": encode_cursor(rows[-1].id) if more and rows else None,
    }


def event_page(
    session: Session, caller_id: str, order_id: str, limit: int, after_id: int | None
) -> dict[str, Any] | None:
    """A page of the order's history, oldest first (None: no such order for the caller)."""
    if find_for_caller(session, caller_id, order_id) is None:
        return None
    stmt = select(OrderEvent).where(OrderEvent.order_id == order_id)
    if after_id is not None:
        stmt = stmt.where(OrderEvent.id > after_id)
    rows = list(session.scalars(stmt.order_by(OrderEvent.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [event_view(e) for e in rows],
        "next_cursor": encode_cursor(str(rows[-1].id)) if more and rows else None,
    }
