"""Retention: a month of simulated traffic shrinks to the horizons, in bounded batches."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select

from worker.db import transaction
from worker.ids import utcnow
from worker.models import (
    ORDER_EVENTS,
    ORDERS,
    Order,
    OrderEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from worker.pipeline.retention import purge

DAYS = 40
PER_DAY = 5


def _id(prefix: str, at: datetime) -> str:
    return f"{prefix}_{int(at.timestamp() * 1000):012x}{secrets.token_hex(10)}"


def _month_of_traffic(db_url: str, caller_id: str, now: datetime) -> None:
    """Per day for 40 days: finished orders, one still open, deliveries in every state."""
    orders, events, deliveries, attempts = [], [], [], []
    with transaction(db_url) as session:
        endpoint = WebhookEndpoint(
            id=_id("wep", now),
            caller_id=caller_id,
            url="http://127.0.0.1:9/h",
            secret="whsec_x",
            event_types=None,
            enabled=True,
            created_at=now,
        )
        session.add(endpoint)
    for day in range(DAYS):
        at = now - timedelta(days=day, minutes=1)
        for n in range(PER_DAY):
            status = (
                "received" if n == 0 else ("complete", "failed", "rejected", "cancelled")[n % 4]
            )
            oid = _id("ord", at)
            orders.append(
                {
                    "id": oid,
                    "caller_id": caller_id,
                    "external_id": f"d{day}-{n}",
                    "request_hash": "h",
                    "order_type": "new",
                    "payload": {},
                    "status": status,
                    "attempts": 1,
                    "failures": 0,
                    "budget_from": at,
                    "created_at": at,
                    "updated_at": at,
                }
            )
            events.append({"order_id": oid, "at": at, "from_status": None, "to_status": status})
            did = _id("msg", at)
            deliveries.append(
                {
                    "id": did,
                    "endpoint_id": endpoint.id,
                    "order_id": oid,
                    "event_type": f"order.{status}",
                    "payload": {"data": {}},
                    "status": "pending" if n == 0 else ("delivered", "failed")[n % 2],
                    "attempts": 1,
                    "created_at": at,
                    "updated_at": at,
                }
            )
            attempts.append({"delivery_id": did, "at": at, "status_code": 200, "latency_ms": 1})
    with transaction(db_url) as session:
        session.execute(insert(ORDERS), orders)
        session.execute(insert(ORDER_EVENTS), events)
        session.execute(insert(WebhookDelivery), deliveries)
        session.execute(insert(WebhookAttempt), attempts)


def _count(db_url: str, model: type, *where: object) -> int:
    with transaction(db_url) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0  # type: ignore[arg-type]


def test_month_of_traffic_is_trimmed_to_the_horizons_in_batches(clean_db, caller_id):
    """Finished orders past 30 days and final deliveries past 7 days go; the rest stays."""
    now = utcnow()
    _month_of_traffic(clean_db, caller_id, now)
    passes = 0
    while True:
        with transaction(clean_db) as session:
            purged = purge(session, now=now, orders_days=30, deliveries_days=7, batch=25)
        assert purged.orders <= 25 and purged.deliveries <= 25
        passes += 1
        if purged.orders == purged.deliveries == 0:
            break
        assert passes < 100
    old_finished = (DAYS - 30) * (PER_DAY - 1)
    assert passes > old_finished // 25  # worked through in several bounded passes
    assert _count(clean_db, Order) == DAYS * PER_DAY - old_finished
    # Open orders are never deleted, however old; history goes with its order.
    assert _count(clean_db, Order, Order.status == "received") == DAYS
    assert _count(clean_db, OrderEvent) == _count(clean_db, Order)
    cutoff = now - timedelta(days=30)
    assert _count(clean_db, Order, Order.created_at < cutoff, Order.status != "received") == 0
    # Deliveries: 7 days of final ones kept, pending ones kept at any age; attempts follow.
    final_kept = 7 * (PER_DAY - 1)
    assert _count(clean_db, WebhookDelivery) == final_kept + DAYS
    assert _count(clean_db, WebhookDelivery, WebhookDelivery.status == "pending") == DAYS
    assert _count(clean_db, WebhookAttempt) == _count(clean_db, WebhookDelivery)


def test_zero_horizon_keeps_everything(clean_db, caller_id):
    """A horizon of 0 days means keep forever."""
    now = utcnow()
    _month_of_traffic(clean_db, caller_id, now)
    with transaction(clean_db) as session:
        purged = purge(session, now=now, orders_days=0, deliveries_days=0, batch=1000)
    assert (purged.orders, purged.deliveries) == (0, 0)
    assert _count(clean_db, Order) == DAYS * PER_DAY
