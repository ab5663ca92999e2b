"""The outbox loads only the endpoints of the callers whose orders changed."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import CallerKey
from tests.helpers import add_orders, new_payload
from worker.db import transaction
from worker.ids import utcnow
from worker.webhooks.outbox import endpoints_of, record_deliveries


def test_only_the_orders_callers_endpoints_are_loaded(
    client: TestClient, alpha: CallerKey, beta: CallerKey, clean_db: str
) -> None:
    """An event of alpha's order reads alpha's one endpoint, not beta's five."""
    for i in range(5):
        url = f"http://127.0.0.1:9/beta{i}"
        client.post("/v1/webhook-endpoints", headers=beta.headers, json={"url": url})
    client.post(
        "/v1/webhook-endpoints", headers=alpha.headers, json={"url": "http://127.0.0.1:9/a"}
    )
    [order_id] = add_orders(clean_db, alpha.id, [new_payload(1)])
    with transaction(clean_db) as session:
        loaded = endpoints_of(session, [order_id])
        event_row = {
            "order_id": order_id,
            "from_status": "received",
            "to_status": "previewing",
            "at": utcnow(),
        }
        ids = record_deliveries(session, [event_row])
    assert len(ids) == 1
    [(_, caller_id, _)] = loaded
    assert caller_id == alpha.id
