"""The webhook outbox: delivery rows written in the same transaction as the transitions.

A transition that commits has its deliveries committed with it; a crash cannot lose one.
Only the endpoints of the orders' own callers are loaded: an order whose caller has no
enabled endpoint costs one small query.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from schemas.webhooks import BatchWebhookEvent, WebhookEvent
from worker import pg_bulk
from worker.ids import new_id, utcnow
from worker.models import Order, OrderLike, WebhookDelivery, WebhookEndpoint
from worker.repository import Event
from worker.states import Status
from worker.views import order_view


def event_type(status: str) -> str:
    """The webhook event type for a status: ``order.<status>``."""
    return f"order.{status}"


def wants(endpoint_types: list[str] | None, etype: str) -> bool:
    """Whether an endpoint's filter (None or empty: everything) accepts ``etype``."""
    if not endpoint_types or etype in endpoint_types:
        return True
    return f"{etype.split('.', 1)[0]}.*" in endpoint_types


# Built once: it runs after every chunk's moves, mostly to find that no endpoint listens.
_ENDPOINTS = select(
    WebhookEndpoint.id, WebhookEndpoint.caller_id, WebhookEndpoint.event_types
).where(
    WebhookEndpoint.enabled.is_(True),
    WebhookEndpoint.caller_id.in_(
        select(Order.caller_id)
        .where(Order.id.in_(bindparam("order_ids", expanding=True)))
        .distinct()
    ),
)


# The same on PostgreSQL, one text whatever the number of ids (prepared by the driver).
_ENDPOINTS_PG = (
    f"SELECT e.id, e.caller_id, e.event_types FROM {WebhookEndpoint.__tablename__} AS e "
    f"WHERE e.enabled AND e.caller_id IN (SELECT o.caller_id FROM {Order.__tablename__} AS o "
    "WHERE o.id = ANY(%(ids)b::text[]))"
)


Endpoint = tuple[str, str, list[str] | None]
"""An enabled endpoint: id, caller id, event types (None: every type)."""


def endpoints_of(session: Session, order_ids: Iterable[str]) -> Sequence[Endpoint]:
    """The enabled endpoints of the orders' callers."""
    ids = sorted(order_ids)
    conn = session.connection()
    if pg_bulk.is_postgresql(conn):
        rows = conn.exec_driver_sql(_ENDPOINTS_PG, {"ids": ids}).all()
    else:
        rows = session.execute(_ENDPOINTS, {"order_ids": ids}).all()
    return cast(Sequence[Endpoint], rows)


def record_deliveries(session: Session, events: Sequence[Event]) -> list[str]:
    """Write one pending delivery per (event, subscribed endpoint); returns their ids."""
    if not events:
        return []
    order_ids = {e["order_id"] for e in events}
    endpoints = endpoints_of(session, order_ids)
    if not endpoints:
        return []
    by_caller: dict[str, list[tuple[str, list[str] | None]]] = {}
    for endpoint_id, caller_id, types in endpoints:
        by_caller.setdefault(caller_id, []).append((endpoint_id, types))
    orders = {
        o.id: o
        for o in session.scalars(
            select(Order)
            .where(Order.id.in_(order_ids), Order.caller_id.in_(by_caller))
            .execution_options(populate_existing=True)
        )
    }
    if not orders:
        return []
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for event in events:
        order = orders.get(event["order_id"])
        if order is None:
            continue
        etype = event_type(event["to_status"])
        view = order_view(order)
        view["status"] = event["to_status"]
        # The body is built through the published contract, so it cannot drift from it.
        payload = WebhookEvent(type=etype, timestamp=event["at"], data=view).model_dump(mode="json")
        for endpoint_id, types in by_caller[order.caller_id]:
            if wants(types, etype):
                rows.append(
                    {
                        "id": new_id("msg"),
                        "endpoint_id": endpoint_id,
                        "order_id": order.id,
                        "event_type": etype,
                        "payload": payload,
                        "status": "pending",
                        "attempts": 0,
                        "due_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
    if rows:
        session.execute(insert(WebhookDelivery), rows)
    return [r["id"] for r in rows]


def record_received(
    session: Session, caller_id: str, orders: Sequence[OrderLike], *, now: datetime
) -> list[str]:
    """Deliveries for the ``received`` events of a caller's new orders ([] if no endpoint).

    Intake writes the first history rows in bulk, without events; one cheap query skips the
    outbox entirely for callers that registered no endpoint (most batches).
    """
    if not orders:
        return []
    has_endpoint = session.scalar(
        select(WebhookEndpoint.id)
        .where(WebhookEndpoint.caller_id == caller_id, WebhookEndpoint.enabled.is_(True))
        .limit(1)
    )
    if has_endpoint is None:
        return []
    events: list[Event] = [
        {"order_id": o.id, "at": now, "from_status": None, "to_status": str(Status.RECEIVED)}
        for o in orders
    ]
    return record_deliveries(session, events)


def record_batch_event(
    session: Session, caller_id: str, batch_id: str, etype: str, data: dict[str, Any]
) -> list[str]:
    """One pending delivery of a batch event per subscribed endpoint of the batch's caller.

    The delivery's subject (``order_id`` column) is the batch id.
    """
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
            WebhookEndpoint.caller_id == caller_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    now = utcnow()
    payload = BatchWebhookEvent.model_validate(
        {"type": etype, "timestamp": now, "data": data}
    ).model_dump(mode="json")
    rows: list[dict[str, Any]] = [
        {
            "id": new_id("msg"),
            "endpoint_id": endpoint_id,
            "order_id": batch_id,
            "event_type": etype,
            "payload": payload,
            "status": "pending",
            "attempts": 0,
            "due_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for endpoint_id, types in endpoints
        if wants(types, etype)
    ]
    if rows:
        session.execute(insert(WebhookDelivery), rows)
    return [r["id"] for r in rows]
