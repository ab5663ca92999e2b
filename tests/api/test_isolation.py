"""Callers see only their own orders and endpoints; another caller's id answers 404."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.api.conftest import CallerKey, order
from worker.db import transaction
from worker.models import Order


def test_another_callers_order_is_404_everywhere(
    client: TestClient, alpha: CallerKey, beta: CallerKey, clean_db: str
) -> None:
    """Beta cannot read, list, cancel or retry alpha's order; alpha's order is unchanged."""
    mine = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    with transaction(clean_db) as session:
        session.execute(update(Order).where(Order.id == mine["id"]).values(status="failed"))
    oid = mine["id"]
    for method, path in [
        ("GET", f"/v1/orders/{oid}"),
        ("GET", f"/v1/orders/{oid}/events"),
        ("POST", f"/v1/orders/{oid}/cancel"),
        ("POST", f"/v1/orders/{oid}/retry"),
    ]:
        response = client.request(method, path, headers=beta.headers)
        assert response.status_code == 404, path
    assert client.get("/v1/orders", headers=beta.headers).json()["items"] == []
    assert (
        client.get(f"/v1/orders?external_id={mine['external_id']}", headers=beta.headers).json()[
            "items"
        ]
        == []
    )
    assert client.post("/v1/retries", headers=beta.headers).json() == {"scheduled": 0}
    assert client.get(f"/v1/orders/{oid}", headers=alpha.headers).json()["status"] == "failed"


def test_external_ids_are_per_caller(client: TestClient, alpha: CallerKey, beta: CallerKey) -> None:
    """Two callers may use the same external_id for different orders."""
    a = client.post("/v1/orders", json=order("same"), headers=alpha.headers)
    b = client.post("/v1/orders", json=order("same", country="FR"), headers=beta.headers)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_idempotency_keys_are_per_caller(
    client: TestClient, alpha: CallerKey, beta: CallerKey
) -> None:
    """The same Idempotency-Key from two callers makes two orders."""
    a = client.post(
        "/v1/orders", json=order(None), headers={**alpha.headers, "Idempotency-Key": "k"}
    )
    b = client.post(
        "/v1/orders", json=order(None), headers={**beta.headers, "Idempotency-Key": "k"}
    )
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_another_callers_webhook_endpoint_is_404(
    client: TestClient, alpha: CallerKey, beta: CallerKey
) -> None:
    """Beta can neither see, delete nor read the deliveries of alpha's endpoint."""
    created = client.post(
        "/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/h"}, headers=alpha.headers
    ).json()
    assert client.get("/v1/webhook-endpoints", headers=beta.headers).json()["items"] == []
    eid = created["id"]
    assert (
        client.get(f"/v1/webhook-endpoints/{eid}/deliveries", headers=beta.headers).status_code
        == 404
    )
    assert client.delete(f"/v1/webhook-endpoints/{eid}", headers=beta.headers).status_code == 404
    assert len(client.get("/v1/webhook-endpoints", headers=alpha.headers).json()["items"]) == 1
