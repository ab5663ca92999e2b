"""Webhooks end to end with a real worker: signed, one per status change, retried, and never
able to change an order's outcome."""

from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from tests.helpers import new_payload, wait_for
from worker.db import transaction
from worker.ids import new_id, utcnow
from worker.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.slow
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Receiver:
    """A local receiver that verifies signatures; it can fail the first N calls."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.fail_left = fail_first
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                outer.calls += 1
                if outer.fail_left > 0:
                    outer.fail_left -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    outer.events.append(Webhook(SECRET).verify(body, dict(self.headers.items())))
                    self.send_response(200)
                except Exception:
                    outer.bad_signatures += 1
                    self.send_response(400)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _endpoint(db_url: str, caller_id: str, url: str, types: list[str] | None = None) -> str:
    endpoint_id = new_id("whe")
    with transaction(db_url) as session:
        session.add(
            WebhookEndpoint(
                id=endpoint_id,
                caller_id=caller_id,
                url=url,
                secret=SECRET,
                event_types=types,
                enabled=True,
                created_at=utcnow(),
            )
        )
    return endpoint_id


def _pending_deliveries(db_url: str) -> int:
    with transaction(db_url) as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.status == "pending"))
        return len(rows.all())


def test_every_status_change_is_delivered_signed(cluster, caller_id, receiver):
    """Each transition of each order arrives once, verified, as order.<status> with the view."""
    _endpoint(cluster.db_url, caller_id, receiver.url)
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(10)])
    cluster.wait_settled(ids)
    expected = {"order.previewing", "order.previewed", "order.submitting", "order.complete"}
    wait_for(lambda: len(receiver.events) >= len(ids) * len(expected), timeout_s=30)
    # Every delivery row settled: nothing more will be sent, so a duplicate would be in by now.
    wait_for(lambda: _pending_deliveries(cluster.db_url) == 0, timeout_s=30)
    assert receiver.bad_signatures == 0
    by_order: dict[str, list[str]] = {}
    for event in receiver.events:
        assert event["data"]["status"] == event["type"].removeprefix("order.")
        by_order.setdefault(event["data"]["id"], []).append(event["type"])
    assert set(by_order) == set(ids)
    for types in by_order.values():
        assert sorted(types) == sorted(expected)
    complete = [e for e in receiver.events if e["type"] == "order.complete"]
    assert all(e["data"]["upstream"]["id"].startswith("order-") for e in complete)


def test_failing_receiver_is_retried_and_never_changes_outcomes(cluster, caller_id):
    """A receiver answering 503 gets the event on a later attempt; orders complete regardless."""
    with Receiver(fail_first=1) as flaky:
        _endpoint(cluster.db_url, caller_id, flaky.url, ["order.complete"])
        cluster.worker()
        cluster.beat()
        [oid] = cluster.submit(caller_id, [new_payload(1)])
        orders = cluster.wait_settled([oid])
        assert orders[oid].status == "complete"
        wait_for(lambda: len(flaky.events) == 1, timeout_s=40)
        assert flaky.calls == 2
    with transaction(cluster.db_url) as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
    assert (delivery.status, delivery.attempts) == ("delivered", 2)


def test_dead_receiver_leaves_orders_complete(cluster, caller_id):
    """Webhooks to a closed port fail and are retried on their own; every order completes."""
    _endpoint(cluster.db_url, caller_id, "http://127.0.0.1:9/nothing-listens")
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(20)])
    orders = cluster.wait_settled(ids)
    assert {o.status for o in orders.values()} == {"complete"}
    with transaction(cluster.db_url) as session:
        pending = session.scalars(select(WebhookDelivery.status)).all()
    assert pending and set(pending) <= {"pending", "failed"}
