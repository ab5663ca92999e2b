"""Batches over HTTP: per-item results, duplicates, limits, bulk enqueue in chunks."""

from __future__ import annotations

from collections.abc import Callable

import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.api.conftest import CallerKey, order, queued, queued_ids, row_counts
from tests.conftest import settings_from
from tests.helpers import learn_limit
from worker.db import transaction
from worker.models import Order
from worker.queue.dispatcher import Dispatcher


def test_mixed_batch_accepts_valid_items_and_reports_the_others(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """Valid items are stored under the batch id; invalid ones are reported per index."""
    body = {
        "orders": [
            order("a"),
            {"order_type": "new", "external_id": "b"},
            order("c"),
            {"order_type": "teleport"},
            "not an object",
            order("d", country=7),
        ]
    }
    response = client.post("/v1/orders/batch", json=body, headers=alpha.headers)
    assert response.status_code == 202
    answer = response.json()
    results = answer["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [("order" in r) for r in results] == [True, False, True, False, False, False]
    assert {f["field"] for f in results[1]["error"]["fields"]} >= {"orderItems", "payment"}
    assert results[3]["error"]["fields"][0]["field"] == "order_type"
    assert results[4]["error"]["fields"][0]["field"] == "(root)"
    assert results[5]["error"]["fields"] == [
        {"field": "country", "message": "Input should be a valid string"}
    ]
    assert all(r["error"]["message"] for r in results if "error" in r)
    with transaction(clean_db) as session:
        stored = session.scalars(select(Order).where(Order.batch_id == answer["batch_id"]))
        assert sorted(o.external_id for o in stored) == ["a", "c"]
    assert results[0]["order"]["batch_id"] == answer["batch_id"]


def test_batch_with_no_valid_item_is_422_and_writes_nothing(
    client: TestClient, alpha: CallerKey, clean_db: str, redis_client: redis.Redis
) -> None:
    """A batch whose items are all invalid is refused, naming each item's fields."""
    body = {"orders": [{"order_type": "new"}, {"order_type": 3}]}
    response = client.post("/v1/orders/batch", json=body, headers=alpha.headers)
    assert response.status_code == 422
    fields = [f["field"] for f in response.json()["fields"]]
    assert "orders.0.orderItems" in fields and "orders.1.order_type" in fields
    assert sum(row_counts(clean_db).values()) == 0
    assert redis_client.llen("orders") == 0


def test_batch_over_the_item_limit_is_refused(
    api: Callable[..., TestClient], alpha: CallerKey, clean_db: str
) -> None:
    """More than ORDERS_MAX_BATCH_ITEMS items is a 422 naming ``orders``."""
    client = api(max_batch_items=3)
    body = {"orders": [order(f"e{i}") for i in range(4)]}
    response = client.post("/v1/orders/batch", json=body, headers=alpha.headers)
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "orders"
    assert row_counts(clean_db)["orders"] == 0
    ok = client.post("/v1/orders/batch", json={"orders": body["orders"][:3]}, headers=alpha.headers)
    assert ok.status_code == 202


def test_duplicates_inside_a_batch(client: TestClient, alpha: CallerKey, clean_db: str) -> None:
    """A repeated external_id in one batch: same payload is the same order, else an error."""
    body = {"orders": [order("x"), order("x"), order("x", country="FR"), order(None), order(None)]}
    results = client.post("/v1/orders/batch", json=body, headers=alpha.headers).json()["results"]
    assert results[0]["order"]["id"] == results[1]["order"]["id"]
    assert results[2]["error"]["fields"][0]["field"] == "external_id"
    assert "item 0" in results[2]["error"]["fields"][0]["message"]
    assert results[3]["order"]["id"] != results[4]["order"]["id"]
    assert row_counts(clean_db)["orders"] == 3


def test_duplicates_of_existing_orders_are_per_item_results(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """Items repeating an earlier order's external_id get that order, or a per-item error."""
    first = client.post("/v1/orders", json=order("old"), headers=alpha.headers).json()
    body = {"orders": [order("old"), order("old", checkoutId="other"), order("new")]}
    response = client.post("/v1/orders/batch", json=body, headers=alpha.headers)
    assert response.status_code == 202
    results = response.json()["results"]
    assert results[0]["order"]["id"] == first["id"]
    assert results[1]["error"]["fields"][0]["field"] == "external_id"
    assert first["id"] in results[1]["error"]["message"]
    assert results[2]["order"]["external_id"] == "new"
    assert row_counts(clean_db)["orders"] == 2


def test_batch_is_dispatched_up_to_the_queue_target_and_the_rest_waits(
    api: Callable[..., TestClient], alpha: CallerKey, redis_client: redis.Redis, env: dict[str, str]
) -> None:
    """A batch of 120 (chunks of 50, 2 chunks per worker process) puts its 100 oldest orders
    on the broker; the other 20 wait in the database until a pass finds room."""
    client = api(chunk_size=50, dispatch_chunks_per_process=2)
    # The fleet has learned that the upstream takes far more than a chunk: chunks stay whole.
    learn_limit(client.app.state.settings, redis_client, 1000)
    body = {"orders": [order(f"e{i}") for i in range(120)]}
    answer = client.post("/v1/orders/batch", json=body, headers=alpha.headers).json()
    ids = [r["order"]["id"] for r in answer["results"]]
    messages = queued(redis_client)
    assert [m["task"] for m in messages] == ["orders.process"] * 2
    assert [len(m["args"][0]) for m in messages] == [50, 50]
    first = set(queued_ids(redis_client))
    assert len(first) == 100 and first < set(ids)
    redis_client.delete("orders")  # as workers take the messages
    dispatcher = Dispatcher(
        settings_from(env, chunk_size=50), redis_client, client.app.state.broker.producer()
    )
    assert dispatcher.run().sent == 20
    assert set(queued_ids(redis_client)) == set(ids) - first
    assert dispatcher.run().sent == 0


def test_batch_results_are_in_request_order_for_a_large_batch(
    client: TestClient, alpha: CallerKey
) -> None:
    """Each result answers its own item, also for a thousand items."""
    body = {"orders": [order(f"e{i}") for i in range(1000)]}
    results = client.post("/v1/orders/batch", json=body, headers=alpha.headers).json()["results"]
    assert [r["order"]["external_id"] for r in results] == [f"e{i}" for i in range(1000)]


def test_an_order_in_a_batch_is_bounded_like_a_single_order(
    api: Callable[..., TestClient], alpha: CallerKey, clean_db: str
) -> None:
    """An item larger than ORDERS_MAX_BODY_BYTES as JSON is refused by itself, named by its
    index; the others are accepted and nothing of it is stored."""
    client = api(max_body_bytes=2_000)
    padded = order("big", customFields={"pad": "x" * 3_000})
    answer = client.post(
        "/v1/orders/batch", json={"orders": [order("small"), padded]}, headers=alpha.headers
    )
    assert answer.status_code == 202, answer.text
    first, second = answer.json()["results"]
    assert "order" in first
    assert second["error"]["fields"][0]["message"].startswith("order is ")
    assert "at most 2000" in second["error"]["message"]
    assert row_counts(clean_db)["orders"] == 1


def test_batches_of_one_caller_at_once_are_limited(
    api: Callable[..., TestClient], alpha: CallerKey, beta: CallerKey, clean_db: str
) -> None:
    """Beyond ORDERS_MAX_BATCHES_IN_FLIGHT_PER_CALLER batches in progress, the caller's next
    one answers 429 with Retry-After and writes nothing; another caller is not affected."""
    from worker.api.submission import batch_slots

    client = api(max_batches_in_flight_per_caller=1)
    body = {"orders": [order("one")]}
    with batch_slots.hold(alpha.id, 1):  # a batch of alpha's being taken in
        refused = client.post("/v1/orders/batch", json=body, headers=alpha.headers)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "at most 1 at once" in refused.json()["message"]
        assert row_counts(clean_db)["orders"] == 0
        other = client.post("/v1/orders/batch", json=body, headers=beta.headers)
        assert other.status_code == 202
    again = client.post("/v1/orders/batch", json=body, headers=alpha.headers)
    assert again.status_code == 202
