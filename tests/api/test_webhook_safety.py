"""Webhook attempts that cannot be turned against us or against other callers: one DNS
answer per attempt (no rebinding), coarse errors for callers, one deadline per attempt,
chunks sent concurrently with a cap per endpoint, absurd Retry-After and odd failures
isolated per delivery. Receivers are real local servers."""

# ruff: noqa: F811  (fixtures imported from test_webhook_delivery)

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from tests.api.conftest import CallerKey, order
from tests.api.test_webhook_delivery import (  # noqa: F401 (fixtures)
    Receiver,
    _deliveries,
    deliverer,
    pending_ids,
    receiver,
)
from worker.db import transaction
from worker.ids import utcnow
from worker.models import WebhookAttempt
from worker.webhooks.delivery import DEFER_S, Deliverer
from worker.webhooks.slots import DeliveryClaims, EndpointSlots
from worker.webhooks.targets import IPAddress

Build = Callable[..., Deliverer]


class Resolver:
    """A resolver that gives its answers in turn and counts the questions."""

    def __init__(self, *answers: str) -> None:
        self.answers = [ipaddress.ip_address(a) for a in answers]
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append(host)
        return [self.answers[min(len(self.calls) - 1, len(self.answers) - 1)]]


class Trickler:
    """A raw socket server that reads the request, then sends one byte every 0.5 s."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Slow: " + b"z" * 200:
                if self.stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                if self.stop.wait(0.5):  # the pace of the trickle; ends at once on close()
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _subscribe(client: TestClient, caller: CallerKey, url: str) -> dict[str, Any]:
    response = client.post(
        "/v1/webhook-endpoints",
        headers=caller.headers,
        json={"url": url, "event_types": ["order.received"]},
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _attempts(db_url: str) -> list[WebhookAttempt]:
    with transaction(db_url) as session:
        return list(session.query(WebhookAttempt).order_by(WebhookAttempt.id))


def test_the_checked_address_is_the_one_connected_to(
    client: TestClient, alpha: CallerKey, clean_db: str, deliverer: Build
) -> None:
    """A name answering 127.0.0.2 to the check and 127.0.0.1 after is sent to 127.0.0.2 only,
    with the URL's host in the Host header; the resolver is asked once per attempt."""
    checked = Receiver(host="127.0.0.2")
    rebound = Receiver(host="127.0.0.1", port=checked.port)
    port = checked.port
    try:
        _subscribe(client, alpha, f"http://hooks.rebind.test:{port}/hook")
        client.post("/v1/orders", json=order(), headers=alpha.headers)
        resolver = Resolver("127.0.0.2", "127.0.0.1")
        assert deliverer(resolve=resolver).run(pending_ids(clean_db)) == []
        assert resolver.calls == ["hooks.rebind.test"]
        assert rebound.requests == []
        [(headers, _)] = checked.requests
        assert headers["host"] == f"hooks.rebind.test:{port}"
        assert _deliveries(clean_db)[0].status == "delivered"
    finally:
        checked.close()
        rebound.close()


def test_a_name_rebinding_to_loopback_is_refused_without_a_second_lookup(
    client: TestClient, alpha: CallerKey, clean_db: str, deliverer: Build, receiver: Receiver
) -> None:
    """With private targets refused, a name whose one answer is loopback is never called and
    the caller sees only ``refused_target``."""
    port = receiver.port
    endpoint = _subscribe(client, alpha, f"http://hooks.rebind.test:{port}/hook")
    client.post("/v1/orders", json=order(), headers=alpha.headers)
    resolver = Resolver("127.0.0.1")
    deliverer(resolve=resolver, allow_private=False).run(pending_ids(clean_db))
    assert resolver.calls == ["hooks.rebind.test"]
    assert receiver.requests == []
    page = client.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=alpha.headers)
    [delivery] = page.json()["items"]
    assert delivery["status"] == "failed" and delivery["last_error"] == "refused_target"
    assert [a["error"] for a in delivery["attempts"]] == ["refused_target"]
    assert "127.0.0.1" not in page.text


def test_callers_see_coarse_error_classes_only(
    client: TestClient, alpha: CallerKey, clean_db: str, deliverer: Build, receiver: Receiver
) -> None:
    """A refused connection, an unresolvable name and a 503 are recorded as classes."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    _subscribe(client, alpha, f"http://127.0.0.1:{dead_port}/x")
    _subscribe(client, alpha, "http://no-such-host.invalid/x")
    _subscribe(client, alpha, receiver.url)
    receiver.status = 503
    client.post("/v1/orders", json=order(), headers=alpha.headers)
    deliverer().run(pending_ids(clean_db))
    errors = sorted(a.error or "" for a in _attempts(clean_db))
    assert errors == ["connect_error", "http_503", "unresolved"]
    assert all(d.status == "pending" for d in _deliveries(clean_db))


def test_registration_refusal_names_no_address(api: Callable[..., TestClient], alpha: CallerKey):
    """``http://localhost/`` is refused with a class of address, not the address itself."""
    client = api(webhook_allow_private=False)
    response = client.post(
        "/v1/webhook-endpoints", headers=alpha.headers, json={"url": "http://localhost/h"}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["fields"][0]["field"] == "url"
    assert "private" in body["message"] and "loopback" in body["message"]
    assert "127.0.0.1" not in response.text and "::1" not in response.text


def test_port_zero_is_refused(client: TestClient, alpha: CallerKey) -> None:
    """A URL with port 0 is 422 naming ``url`` (it used to be taken as port 80)."""
    response = client.post(
        "/v1/webhook-endpoints", headers=alpha.headers, json={"url": "http://127.0.0.1:0/h"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == "url"


def test_a_trickling_receiver_is_cut_at_the_deadline(
    client: TestClient, alpha: CallerKey, clean_db: str, deliverer: Build
) -> None:
    """A receiver sending a header byte every 0.5 s is cut after the 1 s deadline."""
    trickler = Trickler()
    try:
        _subscribe(client, alpha, f"http://127.0.0.1:{trickler.port}/hook")
        client.post("/v1/orders", json=order(), headers=alpha.headers)
        started = time.monotonic()
        deliverer(deadline_s=1.0).run(pending_ids(clean_db))
        elapsed = time.monotonic() - started
    finally:
        trickler.close()
    assert elapsed < 2.5
    [attempt] = _attempts(clean_db)
    assert attempt.error == "timeout" and attempt.latency_ms < 2500


def test_a_chunk_is_sent_concurrently(
    client: TestClient, alpha: CallerKey, clean_db: str, deliverer: Build
) -> None:
    """Four deliveries are at the receiver at once: it answers none until all four are in
    (one at a time, the first would wait in vain and the delivery fail)."""
    slow = Receiver(gate=threading.Barrier(4, timeout=4.0))
    try:
        _subscribe(client, alpha, slow.url)
        for i in range(4):
            client.post("/v1/orders", json=order(f"e{i}"), headers=alpha.headers)
        assert deliverer().run(pending_ids(clean_db)) == []
    finally:
        slow.close()
    assert slow.most == 4
    assert {d.status for d in _deliveries(clean_db)} == {"delivered"}


def test_deliveries_in_flight_per_endpoint_are_capped_fleet_wide(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    deliverer: Build,
    redis_client: redis.Redis,
) -> None:
    """With a cap of 2, a chunk of 5 is sent 2 at a time; with both slots held elsewhere
    (another process), nothing is attempted and the chunk is deferred; past the chunk's time
    budget the rest is deferred too."""
    slow = Receiver(delay_s=0.3)
    try:
        endpoint = _subscribe(client, alpha, slow.url)
        for i in range(5):
            client.post("/v1/orders", json=order(f"e{i}"), headers=alpha.headers)
        slots = EndpointSlots(redis_client, cap=2, lease_s=30)
        assert deliverer(slots=slots).run(pending_ids(clean_db)) == []
        assert slow.most == 2 and len(slow.requests) == 5
        for i in range(5, 8):
            client.post("/v1/orders", json=order(f"e{i}"), headers=alpha.headers)
        elsewhere = EndpointSlots(redis_client, cap=2, lease_s=30)
        held = [elsewhere.acquire(endpoint["id"]) for _ in range(2)]
        assert all(held)
        requeue = deliverer(slots=slots).run(pending_ids(clean_db))
        assert len(requeue) == 3 and {delay for _, delay in requeue} == {DEFER_S}
        assert len(slow.requests) == 5 and len(_attempts(clean_db)) == 5
        for token in held:
            elsewhere.release(endpoint["id"], token or "")
        assert deliverer(slots=slots).run(pending_ids(clean_db)) == []
        assert len(slow.requests) == 8
        for i in range(8, 18):
            client.post("/v1/orders", json=order(f"e{i}"), headers=alpha.headers)
        one = EndpointSlots(redis_client, cap=1, lease_s=30)
        slow.delay_s = 0.2
        requeue = deliverer(slots=one, deadline_s=1.0).run(pending_ids(clean_db))
        sent = len(slow.requests) - 8
        assert 1 <= sent < 10
        assert sorted(requeue) == sorted((i, DEFER_S) for i in pending_ids(clean_db))
        assert len(requeue) == 10 - sent
    finally:
        slow.close()


@pytest.mark.parametrize(
    "retry_after", ["1e12", "inf", "nan", "-3", "Fri, 31 Dec 9999 23:59:59 GMT"]
)
def test_absurd_retry_after_is_bounded_and_recorded(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    deliverer: Build,
    retry_after: str,
) -> None:
    """A 503 with an absurd Retry-After is one recorded attempt, retried within a day; the
    other deliveries of the chunk go on."""
    answering = Receiver()
    answering.status, answering.headers = 503, {"retry-after": retry_after}
    try:
        _subscribe(client, alpha, answering.url)
        for i in range(3):
            client.post("/v1/orders", json=order(f"e{i}"), headers=alpha.headers)
        before = utcnow()
        deliverer().run(pending_ids(clean_db))
    finally:
        answering.close()
    assert len(answering.requests) == 3
    assert [a.error for a in _attempts(clean_db)] == ["http_503"] * 3
    for delivery in _deliveries(clean_db):
        assert delivery.status == "pending" and delivery.attempts == 1
        assert delivery.due_at is not None
        assert delivery.due_at <= before + timedelta(days=1, minutes=1)


def test_one_deliverys_odd_failure_does_not_stop_the_chunk(
    client: TestClient, alpha: CallerKey, clean_db: str, deliverer: Build, receiver: Receiver
) -> None:
    """An unexpected error for one delivery is recorded as ``internal_error``; the rest of the
    chunk is delivered."""
    port = receiver.port
    _subscribe(client, alpha, f"http://boom.test:{port}/hook")
    _subscribe(client, alpha, f"http://fine.test:{port}/hook")

    def resolve(host: str, port: int) -> list[IPAddress]:
        if host == "boom.test":
            raise RuntimeError("resolver bug")
        return [ipaddress.ip_address("127.0.0.1")]

    client.post("/v1/orders", json=order(), headers=alpha.headers)
    deliverer(resolve=resolve).run(pending_ids(clean_db))
    assert len(receiver.requests) == 1
    assert sorted(a.error or "ok" for a in _attempts(clean_db)) == ["internal_error", "ok"]
    assert sorted(d.status for d in _deliveries(clean_db)) == ["delivered", "pending"]


def test_a_delivery_being_handled_elsewhere_is_not_sent_twice(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    deliverer: Build,
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    """Two tasks holding the same delivery id (sweeper and retry, say) send it once."""
    _subscribe(client, alpha, receiver.url)
    client.post("/v1/orders", json=order(), headers=alpha.headers)
    ids = pending_ids(clean_db)
    other_task = DeliveryClaims(redis_client, lease_s=30)
    assert other_task.claim(ids) == ids
    deliverer().run(ids)
    assert receiver.requests == [] and _attempts(clean_db) == []
    other_task.release(ids)
    deliverer().run(ids)
    deliverer().run(ids)
    assert len(receiver.requests) == 1
