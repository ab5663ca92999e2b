"""The order view callers see (API, webhooks, CLI): one function, one shape."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row

from worker.models import OrderEvent, OrderLike

ViewSource = OrderLike | Row[Any]
"""A stored order: loaded (ORM), just created (plain data) or a row of its view columns."""


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with a ``Z`` for UTC, or None."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def upstream_view(order: ViewSource) -> dict[str, Any] | None:
    """The upstream's answer as recorded, or None until the order was submitted."""
    if order.upstream_id is None and order.upstream_status is None:
        return None
    return {
        "id": order.upstream_id,
        "order_reference": order.upstream_reference,
        "status": order.upstream_status,
        "subscriptionReference": order.subscription_reference,
        "owner": order.upstream_owner,
    }


def order_view(order: ViewSource) -> dict[str, Any]:
    """The contract's order view (design.md section 6)."""
    return {
        "id": order.id,
        "status": order.status,
        "reason": order.reason,
        "message": order.message,
        "attempts": order.attempts,
        "next_attempt_at": iso(order.next_attempt_at),
        "external_id": order.external_id,
        "batch_id": order.batch_id,
        "order_type": order.order_type,
        "created_at": iso(order.created_at),
        "updated_at": iso(order.updated_at),
        "preview": order.preview,
        "upstream": upstream_view(order),
    }


def event_view(event: OrderEvent) -> dict[str, Any]:
    """One history row as callers see it."""
    return {
        "at": iso(event.at),
        "from": event.from_status,
        "to": event.to_status,
        "attempt": event.attempt,
        "reason": event.reason,
        "status_code": event.status_code,
        "message": event.message,
        "actor": event.actor,
    }
