"""The results file of a batch: one JSON line per order, in the order of the batch request.

Read page by page on the ``(batch_id, batch_index)`` index, each page in its own short read
session: the first line goes out after one page, memory holds one page whatever the batch's
size, and a reader that lost its connection resumes with ``after=<last index it got>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.batches import rules
from worker.db import read_session
from worker.models import Order

PAGE = 1000

_COLUMNS = (
    Order.batch_index,
    Order.id,
    Order.external_id,
    Order.status,
    Order.reason,
    Order.message,
    Order.upstream_id,
    Order.upstream_reference,
    Order.upstream_status,
    Order.subscription_reference,
    Order.upstream_owner,
)


def page(
    session: Session, batch_id: str, *, after: int, final_only: bool, limit: int = PAGE
) -> list[dict[str, Any]]:
    """Up to ``limit`` lines of the batch after index ``after``."""
    stmt = (
        select(*_COLUMNS)
        .where(Order.batch_id == batch_id, Order.batch_index > after)
        .order_by(Order.batch_index)
        .limit(limit)
    )
    if final_only:
        stmt = stmt.where(Order.status.in_(list(rules.FINAL)))
    return [_line(row) for row in session.execute(stmt)]


def _line(row: Any) -> dict[str, Any]:
    index, oid, external_id, status, reason, message, uid, ref, ustatus, sub, owner = row
    upstream = None
    if uid is not None:
        upstream = {
            "id": uid,
            "order_reference": ref,
            "status": ustatus,
            "subscriptionReference": sub,
            "owner": owner,
        }
    return {
        "index": index,
        "order_id": oid,
        "external_id": external_id,
        "status": status,
        "final": status in rules.FINAL,
        "reason": reason,
        "message": message,
        "upstream": upstream,
    }


def stream(
    db_url: str, batch_id: str, *, after: int, final_only: bool, limit: int | None = None
) -> Iterator[bytes]:
    """JSON Lines of the batch from ``after`` on (``limit`` lines at most), a page at a time."""
    left = limit
    while left is None or left > 0:
        size = PAGE if left is None else min(PAGE, left)
        with read_session(db_url) as session:
            lines = page(session, batch_id, after=after, final_only=final_only, limit=size)
        if not lines:
            return
        yield b"".join(orjson.dumps(line) + b"\n" for line in lines)
        after = lines[-1]["index"]
        if left is not None:
            left -= len(lines)
        if len(lines) < size:
            return
