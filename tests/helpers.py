"""Helpers shared by tests: valid payloads, storing orders, waiting on a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis

from worker.db import transaction
from worker.flow.setup import build_store
from worker.flow.state import initial_state
from worker.ids import new_id, sha256_hex, utcnow
from worker.intake.checks import new_order
from worker.intake.store import create_orders
from worker.models import Caller
from worker.settings import Settings


def new_payload(n: int, **extra: Any) -> dict[str, Any]:
    """A valid ``new`` order payload."""
    payload = {
        "order_type": "new",
        "external_id": f"EXT-{n}",
        "process_immediately": True,
        "checkoutId": f"basket-{n}",
        "country": "GB",
        "orderItems": [{"offer": {"id": "a" * 40, "version": "b" * 40}, "quantity": 1}],
        "billingDetails": {"firstName": "Ada", "lastName": "Lovelace", "email": "a@example.com"},
        "payment": {"type": "zuora", "zuora": {"refId": "r1"}},
    }
    payload.update(extra)
    return payload


def add_orders(
    db_url: str, caller_id: str, payloads: list[dict[str, Any]], grace_s: float = 30.0
) -> list[str]:
    """Store payloads as received orders (due for the sweeper after ``grace_s``)."""
    items = [new_order(p) for p in payloads]
    with transaction(db_url) as session:
        orders = create_orders(session, caller_id, items, now=utcnow(), due_in_s=grace_s)
    return [o.id for o in orders]


def new_caller(db_url: str, name: str) -> str:
    """A caller row (no usable key: for tests below the API); returns its id."""
    caller_id = new_id("clr")
    with transaction(db_url) as session:
        session.add(
            Caller(
                id=caller_id,
                name=name,
                key_hash=sha256_hex(caller_id),
                key_prefix="test",
                created_at=utcnow(),
            )
        )
    return caller_id


def learn_limit(settings: Settings, client: redis.Redis, limit: int) -> None:
    """Make the fleet's shared state say the upstream takes ``limit`` calls in flight (what
    every dispatcher sizes its chunks from)."""
    store = build_store(settings, client)
    start = initial_state(store.cfg)
    store.write(replace(start, loss=replace(start.loss, limit=float(limit))))


def wait_for(
    predicate: Callable[[], object], timeout_s: float = 5.0, *, every_s: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout_s`` (a deadline on the thing
    awaited, never a pause of a guessed length)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        time.sleep(every_s)
