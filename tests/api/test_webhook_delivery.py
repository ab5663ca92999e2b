"""Webhook deliveries to a real local receiver: Standard Webhooks signatures, retries, 410."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from tests.api.conftest import CallerKey, order
from worker.db import transaction
from worker.ids import utcnow
from worker.models import Order, WebhookDelivery
from worker.webhooks.delivery import Deliverer
from worker.webhooks.slots import DeliveryClaims, EndpointSlots


class Receiver:
    """A tiny HTTP server answering ``status`` (after ``delay_s``, with ``headers``); it records
    every request and the most it held at once."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_s: float = 0.0,
        gate: threading.Barrier | None = None,
    ) -> None:
        self.status = 200
        self.delay_s = delay_s
        self.gate = gate  # each request waits here (for the others) before its answer
        self.headers: dict[str, str] = {}
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.active = self.most = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.active += 1
                    receiver.most = max(receiver.most, receiver.active)
                if receiver.gate is not None:
                    receiver.gate.wait()  # BrokenBarrierError: no answer, the delivery fails
                time.sleep(receiver.delay_s)
                with receiver.lock:
                    receiver.active -= 1
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _subscribe(client: TestClient, caller: CallerKey, url: str) -> dict[str, Any]:
    response = client.post(
        "/v1/webhook-endpoints",
        headers=caller.headers,
        json={"url": url, "event_types": ["order.received"]},
    )
    assert response.status_code == 201
    return response.json()  # type: ignore[no-any-return]


def _deliveries(db_url: str) -> list[WebhookDelivery]:
    with transaction(db_url) as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


@pytest.fixture
def deliverer(clean_db: str, redis_client: redis.Redis) -> Iterator[Callable[..., Deliverer]]:
    """A factory of deliverers on the test database and Redis (overrides by field name)."""
    executor = ThreadPoolExecutor(8)

    def build(**overrides: Any) -> Deliverer:
        values: dict[str, Any] = {
            "db_url": clean_db,
            "slots": EndpointSlots(redis_client, cap=4, lease_s=30),
            "claims": DeliveryClaims(redis_client, lease_s=30),
            "executor": executor,
            "allow_private": True,
            "max_attempts": 8,
            "deadline_s": 5.0,
        }
        values.update(overrides)
        return Deliverer(**values)

    yield build
    executor.shutdown()


def pending_ids(db_url: str) -> list[str]:
    return [d.id for d in _deliveries(db_url) if d.status == "pending"]


def _deliver(
    build: Callable[..., Deliverer], db_url: str, allow_private: bool = True
) -> list[tuple[str, float]]:
    return build(allow_private=allow_private).run(pending_ids(db_url))


def test_delivery_is_signed_per_standard_webhooks(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    receiver: Receiver,
    deliverer: Callable[..., Deliverer],
) -> None:
    """The receiver gets the order event and can verify its signature with the secret."""
    endpoint = _subscribe(client, alpha, receiver.url)
    view = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    assert _deliver(deliverer, clean_db) == []
    [(headers, body)] = receiver.requests
    event = Webhook(endpoint["secret"]).verify(body, headers)
    assert event["type"] == "order.received"
    assert event["data"]["id"] == view["id"] and event["data"]["status"] == "received"
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(headers)
    with pytest.raises(Exception):  # noqa: B017 - any verification failure will do
        Webhook("whsec_" + "A" * 32).verify(body, headers)
    page = client.get(
        f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=alpha.headers
    ).json()
    [delivery] = page["items"]
    assert delivery["status"] == "delivered" and delivery["event_type"] == "order.received"
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] == 200 and attempt["latency_ms"] >= 0
    assert attempt["error"] is None and attempt["at"]


def test_failing_receiver_gets_a_retry_scheduled(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    receiver: Receiver,
    deliverer: Callable[..., Deliverer],
) -> None:
    """A 500 from the receiver leaves the delivery pending with a retry; the order is untouched."""
    endpoint = _subscribe(client, alpha, receiver.url)
    view = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    receiver.status = 500
    before = utcnow()
    requeue = _deliver(deliverer, clean_db)
    [delivery] = _deliveries(clean_db)
    assert delivery.status == "pending" and delivery.attempts == 1
    assert delivery.last_status_code == 500
    assert delivery.due_at is not None and delivery.due_at >= before + timedelta(seconds=4)
    assert requeue == [(delivery.id, 5.0)]
    with transaction(clean_db) as session:
        stored = session.get(Order, view["id"])
        assert stored is not None and stored.status == "received"
    attempts = client.get(
        f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=alpha.headers
    ).json()["items"][0]["attempts"]
    assert [a["status_code"] for a in attempts] == [500]
    receiver.status = 200
    _deliver(deliverer, clean_db)
    assert _deliveries(clean_db)[0].status == "delivered"
    assert len(receiver.requests) == 2
    assert receiver.requests[0][0]["webhook-id"] == receiver.requests[1][0]["webhook-id"]


def test_gone_receiver_disables_the_endpoint(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    receiver: Receiver,
    deliverer: Callable[..., Deliverer],
) -> None:
    """A 410 Gone fails the delivery and disables the endpoint; no new deliveries follow."""
    endpoint = _subscribe(client, alpha, receiver.url)
    client.post("/v1/orders", json=order("a"), headers=alpha.headers)
    receiver.status = 410
    assert _deliver(deliverer, clean_db) == []
    assert _deliveries(clean_db)[0].status == "failed"
    [listed] = client.get("/v1/webhook-endpoints", headers=alpha.headers).json()["items"]
    assert listed["id"] == endpoint["id"] and listed["enabled"] is False
    assert "410" in listed["disabled_reason"]
    client.post("/v1/orders", json=order("b"), headers=alpha.headers)
    assert len(_deliveries(clean_db)) == 1


def test_private_receiver_refused_at_delivery_time(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    receiver: Receiver,
    deliverer: Callable[..., Deliverer],
) -> None:
    """With private targets disallowed, a delivery to 127.0.0.1 fails without being sent."""
    _subscribe(client, alpha, receiver.url)
    client.post("/v1/orders", json=order(), headers=alpha.headers)
    assert _deliver(deliverer, clean_db, allow_private=False) == []
    [delivery] = _deliveries(clean_db)
    assert delivery.status == "failed" and delivery.last_error == "refused_target"
    assert receiver.requests == []


def test_only_subscribed_event_types_are_recorded(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    receiver: Receiver,
    deliverer: Callable[..., Deliverer],
) -> None:
    """An endpoint filtered on order.complete gets nothing for a received order."""
    client.post(
        "/v1/webhook-endpoints",
        headers=alpha.headers,
        json={"url": receiver.url, "event_types": ["order.complete"]},
    )
    client.post("/v1/orders", json=order(), headers=alpha.headers)
    assert _deliveries(clean_db) == []


def test_cancel_records_a_delivery(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    receiver: Receiver,
    deliverer: Callable[..., Deliverer],
) -> None:
    """Cancelling through the API writes an order.cancelled delivery for subscribers."""
    client.post(
        "/v1/webhook-endpoints",
        headers=alpha.headers,
        json={"url": receiver.url, "event_types": ["order.cancelled"]},
    )
    view = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    client.post(f"/v1/orders/{view['id']}/cancel", headers=alpha.headers)
    [delivery] = _deliveries(clean_db)
    assert delivery.event_type == "order.cancelled"
    assert orjson.loads(orjson.dumps(delivery.payload))["data"]["status"] == "cancelled"
