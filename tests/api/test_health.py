"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable

import pytest
import redis
from fastapi.testclient import TestClient

from tests.api.conftest import CallerKey, make_caller, order
from worker import embedded_redis
from worker.api.health import REDIS_CLIENT_NAME
from worker.errors import RetryableError, UpstreamUnavailable
from worker.flow.gate import Gate
from worker.flow.setup import build_store
from worker.flow.view import line_from_metrics


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_healthz_needs_no_key(client: TestClient) -> None:
    """/healthz answers 200 without an API key."""
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_when_database_and_redis_answer(client: TestClient) -> None:
    """/readyz is 200 with both dependencies reachable."""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_is_503_without_redis(api: Callable[..., TestClient]) -> None:
    """/readyz is 503 naming Redis when it does not answer."""
    client = api(redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["redis"].startswith("error")


def test_readyz_is_503_without_database(api: Callable[..., TestClient]) -> None:
    """/readyz is 503 naming the database when it does not answer."""
    client = api(database_url=f"postgresql://root@127.0.0.1:{_closed_port()}/none")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("error")
    assert response.json()["checks"]["redis"] == "ok"


def test_metrics(client: TestClient, alpha: CallerKey, clean_db: str) -> None:
    """/metrics counts requests by route, accepted orders and orders by status."""
    client.post(
        "/v1/orders/batch", json={"orders": [order("a"), order("b")]}, headers=alpha.headers
    )
    client.get("/v1/orders/ord_00000000000000000000000000000000", headers=alpha.headers)
    operator = make_caller(clean_db, "ops", role="operator")
    text = client.get("/metrics", headers=operator.headers).text
    assert re.search(
        r'orders_http_requests_total\{method="POST",route="/v1/orders/batch",'
        r'status="202"\} 1\.0',
        text,
    )
    assert re.search(
        r'orders_http_requests_total\{method="GET",route="/v1/orders/\{order_id\}",'
        r'status="404"\} 1\.0',
        text,
    )
    assert "orders_http_request_duration_seconds_bucket" in text
    assert "orders_accepted_total 2.0" in text
    assert 'orders_by_status{status="received"} 2.0' in text


def test_openapi_documents_the_contract(client: TestClient) -> None:
    """The OpenAPI document has every route, the upstream body schema and examples."""
    doc = client.get("/openapi.json").json()
    assert {
        "/v1/orders",
        "/v1/orders/batch",
        "/v1/orders/{order_id}",
        "/v1/retries",
        "/v1/webhook-endpoints",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(doc["paths"])
    body = doc["paths"]["/v1/orders"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/OrderPayload"}
    assert body["examples"]["new"]["value"]["order_type"] == "new"
    assert "NewOrder" in doc["components"]["schemas"]
    assert doc["components"]["schemas"]["OrderView"]["examples"]
    assert client.get("/docs").status_code == 200


def test_readyz_reuses_one_pooled_redis_connection(client: TestClient, redis_client) -> None:
    """Many probes share one named, pooled Redis connection (not one new connection each)."""
    for _ in range(30):
        assert client.get("/readyz").status_code == 200
        time.sleep(0.04)
    # This test's database only: other test processes on the server have their own pools.
    db = str(redis_client.connection_pool.connection_kwargs.get("db", 0))
    named = [
        c
        for c in redis_client.client_list()
        if c.get("name") == REDIS_CLIENT_NAME and str(c.get("db")) == db
    ]
    assert len(named) == 1


def test_readyz_result_is_cached_for_about_a_second(api: Callable[..., TestClient]) -> None:
    """A probe right after a good one answers from the cache; a second later it sees the
    truth (here: the Redis server was stopped)."""
    proc, url = embedded_redis.start()
    try:
        client = api(redis_url=url)
        assert client.get("/readyz").status_code == 200
        proc.kill()
        proc.wait()
        assert client.get("/readyz").status_code == 200
        time.sleep(1.1)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["redis"].startswith("error")
    finally:
        proc.kill()
        proc.wait()


def test_metrics_show_the_upstream_budget(
    api: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """What the workers left in Redis: limit, ceiling, breaker, refusals; one status line."""
    app = api(upstream_max_in_flight=16)
    settings = app.app.state.settings  # type: ignore[attr-defined]
    gate = Gate(build_store(settings, redis_client), ttl_s=3)

    def refused() -> None:
        raise RetryableError("upstream_429", status_code=429)

    with pytest.raises(UpstreamUnavailable):
        gate.call(refused)
    gate.sync()
    gate.close()
    operator = make_caller(app.app.state.settings.database_url, "ops", role="operator")  # type: ignore[attr-defined]
    text = app.get("/metrics", headers=operator.headers).text
    assert "orders_upstream_ceiling 16.0" in text
    assert 'orders_upstream_breaker{state="closed"} 1.0' in text
    assert 'orders_upstream_calls_total{signal="dropped"} 1.0' in text
    assert "orders_upstream_in_flight 0.0" in text
    line = line_from_metrics(text)
    assert line is not None and "breaker closed" in line and "of 16" in line
    assert "1 refused" in line
