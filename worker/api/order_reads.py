"""The order view read for ``GET /v1/orders/{id}``: one Core query, bytes out, and its ETag.

The hottest read of the API (callers poll it) skips the ORM and any validation: the row of
our own table is shaped by :func:`worker.views.order_view` and serialised by orjson straight
to bytes. The ETag is a digest of those bytes, so it changes exactly when the answer does and
a caller polling with ``If-None-Match`` gets a ``304`` without a body.
"""

from __future__ import annotations

from hashlib import blake2b

import orjson
from sqlalchemy import Connection, bindparam, select

from worker.models import Order
from worker.views import order_view

VIEW_COLUMNS = (
    Order.id,
    Order.status,
    Order.reason,
    Order.message,
    Order.attempts,
    Order.next_attempt_at,
    Order.external_id,
    Order.batch_id,
    Order.order_type,
    Order.created_at,
    Order.updated_at,
    Order.preview,
    Order.upstream_id,
    Order.upstream_status,
    Order.upstream_reference,
    Order.subscription_reference,
    Order.upstream_owner,
)
"""What the order view shows (everything but the payload and the bookkeeping columns)."""

BY_ID = select(*VIEW_COLUMNS).where(
    Order.id == bindparam("order_id"), Order.caller_id == bindparam("caller_id")
)


def view_bytes(conn: Connection, caller_id: str, order_id: str) -> bytes | None:
    """The caller's order view as JSON bytes, or None (another caller's order is not found)."""
    row = conn.execute(BY_ID, {"order_id": order_id, "caller_id": caller_id}).first()
    return None if row is None else orjson.dumps(order_view(row))


def etag(body: bytes) -> str:
    """A strong entity tag for ``body``."""
    return f'"{blake2b(body, digest_size=12).hexdigest()}"'


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """True if ``If-None-Match`` names ``tag`` (weak comparison, RFC 9110 13.1.2) or is ``*``."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        value = candidate.strip()
        if value == "*" or value.removeprefix("W/") == tag:
            return True
    return False
