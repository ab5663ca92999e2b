"""Enqueue after commit: by task name into Redis, and intake keeps working without Redis."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import redis
from fastapi.testclient import TestClient

from tests.api.conftest import CallerKey, make_caller, order, queued, queued_ids
from tests.conftest import settings_from
from worker.api import create_app
from worker.api.broker import Broker
from worker.db import transaction
from worker.models import Order


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_order_is_enqueued_by_task_name(
    client: TestClient, alpha: CallerKey, redis_client: redis.Redis
) -> None:
    """One accepted order is one ``orders.process`` message on the ``orders`` list."""
    view = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    assert queued(redis_client) == [{"task": "orders.process", "args": [[view["id"]]]}]


class CommitCheckingBroker(Broker):
    """A broker that records whether each order was visible to another session when sent."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.visible: list[bool] = []

    def dispatch(
        self, order_ids: Sequence[str], delivery_ids: Sequence[str], **kwargs: Any
    ) -> bool:
        with transaction(self.settings.database_url) as session:
            self.visible.extend(session.get(Order, i) is not None for i in order_ids)
        return super().dispatch(order_ids, delivery_ids, **kwargs)


def test_orders_are_committed_before_they_are_enqueued(
    env: dict[str, str], alpha: CallerKey, redis_client: redis.Redis
) -> None:
    """When the enqueue happens, the orders are already visible to other connections."""
    # Room in the queue for both messages (no worker process is registered: one counts).
    app = create_app(settings_from(env, dispatch_chunks_per_process=2))
    broker = CommitCheckingBroker(app.state.settings)
    app.state.broker = broker
    with TestClient(app) as client:
        client.post("/v1/orders", json=order("a"), headers=alpha.headers)
        client.post(
            "/v1/orders/batch", json={"orders": [order("b"), order("c")]}, headers=alpha.headers
        )
    assert broker.visible == [True, True, True]
    assert len(queued_ids(redis_client)) == 3


def test_intake_accepts_orders_when_redis_is_down(
    api: Callable[..., TestClient],
    alpha: CallerKey,
    clean_db: str,
    redis_client: redis.Redis,
) -> None:
    """With Redis unreachable, orders are still answered 202 and stored for the sweeper."""
    client = api(redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    one = client.post("/v1/orders", json=order("a"), headers=alpha.headers)
    batch = client.post(
        "/v1/orders/batch", json={"orders": [order("b"), order("c")]}, headers=alpha.headers
    )
    assert one.status_code == 202 and batch.status_code == 202
    ids = [one.json()["id"]] + [r["order"]["id"] for r in batch.json()["results"]]
    with transaction(clean_db) as session:
        stored = [session.get(Order, i) for i in ids]
    assert all(o is not None and o.status == "received" and o.due_at is not None for o in stored)
    assert redis_client.llen("orders") == 0
    operator = make_caller(clean_db, "ops", role="operator")
    metrics = client.get("/metrics", headers=operator.headers).text
    assert "orders_enqueue_failures_total 2.0" in metrics
    assert client.get("/readyz").status_code == 503
