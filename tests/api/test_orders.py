"""Single orders over HTTP: intake, reads, history, cancel, retries, authentication."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from schemas.intake import OrderStatus
from tests.api.conftest import CallerKey, order, queued_ids, row_counts
from worker.db import transaction
from worker.models import Order, OrderEvent
from worker.states import Status

VIEW_KEYS = {
    "id",
    "status",
    "reason",
    "attempts",
    "next_attempt_at",
    "external_id",
    "batch_id",
    "created_at",
    "updated_at",
    "preview",
    "upstream",
}


def _set(db_url: str, order_id: str, **values: object) -> None:
    with transaction(db_url) as session:
        session.execute(update(Order).where(Order.id == order_id).values(**values))


def test_statuses_documented_match_the_state_machine() -> None:
    """The API's status names are exactly the state machine's."""
    assert set(get_args(OrderStatus)) == {str(s) for s in Status}


def test_post_order_answers_202_with_the_view_and_stores_it(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """A valid order answers 202 with the order view and is stored with one history row."""
    response = client.post("/v1/orders", json=order(), headers=alpha.headers)
    assert response.status_code == 202
    view = response.json()
    assert set(view) >= VIEW_KEYS
    assert view["status"] == "received" and view["external_id"] == "ext-1"
    assert view["upstream"] is None and view["attempts"] == 0
    assert response.headers["location"] == f"/v1/orders/{view['id']}"
    with transaction(clean_db) as session:
        stored = session.get(Order, view["id"])
        assert stored is not None and stored.caller_id == alpha.id
        assert stored.payload == order()
        events = session.scalars(select(OrderEvent).where(OrderEvent.order_id == view["id"]))
        assert [e.to_status for e in events] == ["received"]


def test_get_order_returns_the_same_view(client: TestClient, alpha: CallerKey) -> None:
    """GET /v1/orders/{id} answers the view the intake answered."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    response = client.get(f"/v1/orders/{created['id']}", headers=alpha.headers)
    assert response.status_code == 200
    assert response.json() == created


def test_get_order_shows_upstream_result(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """Once submitted, the view carries the upstream id, reference and status."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    _set(
        clean_db,
        created["id"],
        status="complete",
        upstream_id="up-1",
        upstream_reference="ORD-1",
        upstream_status="complete",
        subscription_reference="SUB-1",
        upstream_owner="owner-1",
        preview={"total": 10},
    )
    view = client.get(f"/v1/orders/{created['id']}", headers=alpha.headers).json()
    assert view["upstream"] == {
        "id": "up-1",
        "order_reference": "ORD-1",
        "status": "complete",
        "subscriptionReference": "SUB-1",
        "owner": "owner-1",
    }
    assert view["preview"] == {"total": 10} and view["status"] == "complete"


@pytest.mark.parametrize("order_id", ["ord_" + "0" * 32, "nope", "ord_%00", "x" * 300])
def test_unknown_order_is_404(client: TestClient, alpha: CallerKey, order_id: str) -> None:
    """An unknown or malformed id answers 404 with a message."""
    response = client.get(f"/v1/orders/{order_id}", headers=alpha.headers)
    assert response.status_code in (400, 404)
    assert response.json()["message"]


def test_events_list_the_history(client: TestClient, alpha: CallerKey) -> None:
    """GET /v1/orders/{id}/events lists the status changes, oldest first."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    client.post(f"/v1/orders/{created['id']}/cancel", headers=alpha.headers)
    page = client.get(f"/v1/orders/{created['id']}/events", headers=alpha.headers).json()
    assert [(e["from"], e["to"]) for e in page["items"]] == [
        (None, "received"),
        ("received", "cancelled"),
    ]
    assert page["next_cursor"] is None


def test_cancel_before_submit(client: TestClient, alpha: CallerKey) -> None:
    """A received order can be cancelled; cancelling again answers the same view."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    first = client.post(f"/v1/orders/{created['id']}/cancel", headers=alpha.headers)
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    again = client.post(f"/v1/orders/{created['id']}/cancel", headers=alpha.headers)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


@pytest.mark.parametrize("status", ["submitting", "submitted", "complete", "failed"])
def test_cancel_after_submit_is_409(
    client: TestClient, alpha: CallerKey, clean_db: str, status: str
) -> None:
    """An order past the submit point answers 409 with a message and does not change."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    _set(clean_db, created["id"], status=status)
    response = client.post(f"/v1/orders/{created['id']}/cancel", headers=alpha.headers)
    assert response.status_code == 409
    assert status in response.json()["message"]
    assert (
        client.get(f"/v1/orders/{created['id']}", headers=alpha.headers).json()["status"] == status
    )


def test_retry_one_failed_order_now(
    client: TestClient, alpha: CallerKey, clean_db: str, redis_client: redis.Redis
) -> None:
    """Retrying a failed order records a history row and enqueues it after commit."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    _set(clean_db, created["id"], status="failed", reason="upstream_502", due_at=None)
    redis_client.delete("orders")
    response = client.post(f"/v1/orders/{created['id']}/retry", headers=alpha.headers)
    assert response.status_code == 200 and response.json() == {"scheduled": 1}
    view = client.get(f"/v1/orders/{created['id']}", headers=alpha.headers).json()
    assert view["status"] == "received" and view["reason"] == "retry_scheduled"
    assert queued_ids(redis_client) == [created["id"]]
    events = client.get(f"/v1/orders/{created['id']}/events", headers=alpha.headers).json()
    assert events["items"][-1]["to"] == "received"
    assert events["items"][-1]["actor"] == f"caller:{alpha.id}"


def test_retry_one_later_is_not_enqueued(
    client: TestClient, alpha: CallerKey, clean_db: str, redis_client: redis.Redis
) -> None:
    """A retry ``at`` a later time waits in the database (next_attempt_at), not in Redis."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    _set(clean_db, created["id"], status="failed", due_at=None)
    redis_client.delete("orders")
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    response = client.post(
        f"/v1/orders/{created['id']}/retry", headers=alpha.headers, json={"at": at.isoformat()}
    )
    assert response.json() == {"scheduled": 1}
    view = client.get(f"/v1/orders/{created['id']}", headers=alpha.headers).json()
    assert datetime.fromisoformat(view["next_attempt_at"]) == at
    assert queued_ids(redis_client) == []


def test_retry_one_not_failed_is_409(client: TestClient, alpha: CallerKey) -> None:
    """Only failed or submit_unknown orders can be retried."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    response = client.post(f"/v1/orders/{created['id']}/retry", headers=alpha.headers)
    assert response.status_code == 409 and "received" in response.json()["message"]


def test_retries_by_filter(
    client: TestClient, alpha: CallerKey, clean_db: str, redis_client: redis.Redis
) -> None:
    """POST /v1/retries schedules exactly the orders matching status and reason."""
    ids = [
        client.post("/v1/orders", json=order(f"e{i}"), headers=alpha.headers).json()["id"]
        for i in range(4)
    ]
    _set(clean_db, ids[0], status="failed", reason="upstream_502")
    _set(clean_db, ids[1], status="failed", reason="upstream_502")
    _set(clean_db, ids[2], status="failed", reason="upstream_timeout")
    redis_client.delete("orders")
    response = client.post(
        "/v1/retries", headers=alpha.headers, json={"status": "failed", "reason": "upstream_502"}
    )
    assert response.json() == {"scheduled": 2}
    # The retried ones go out, with received orders of the backlog that were waiting for room.
    queued_now = set(queued_ids(redis_client))
    assert set(ids[:2]) <= queued_now and ids[2] not in queued_now
    statuses = [client.get(f"/v1/orders/{i}", headers=alpha.headers).json()["status"] for i in ids]
    assert statuses == ["received", "received", "failed", "received"]
    assert client.post("/v1/retries", headers=alpha.headers).json() == {"scheduled": 1}


def test_retries_reject_a_status_that_cannot_be_retried(
    client: TestClient, alpha: CallerKey
) -> None:
    """A retry filter on a non-retryable status is 422 naming ``status``."""
    response = client.post("/v1/retries", headers=alpha.headers, json={"status": "complete"})
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["fields"]] == ["status"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer ok_wrong",
        "bearer",
        "Token ok_x",
        "Bearer ok_" + "x" * 500,
    ],
)
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/orders"),
        ("POST", "/v1/orders"),
        ("POST", "/v1/orders/batch"),
        ("GET", "/v1/orders/ord_00000000000000000000000000000000"),
        ("POST", "/v1/retries"),
        ("GET", "/v1/webhook-endpoints"),
    ],
)
def test_missing_or_bad_key_is_401(
    client: TestClient,
    alpha: CallerKey,
    clean_db: str,
    header: str | None,
    method: str,
    path: str,
) -> None:
    """Every /v1 call without a valid key answers 401 JSON and writes nothing."""
    headers = {} if header is None else {"Authorization": header}
    response = client.request(method, path, headers=headers, json=order())
    assert response.status_code == 401
    assert response.json()["message"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert row_counts(clean_db)["orders"] == 0


def test_a_caller_never_resubmits_a_submit_unknown_order(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """A submit_unknown order, being reconciled or held, is never re-submitted by a caller's
    retry (one or by filter): 409 saying why and how many, and the order does not move."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    soon = datetime.now(UTC) + timedelta(seconds=30)
    _set(clean_db, created["id"], status="submit_unknown", reason="upstream_timeout", due_at=soon)
    response = client.post(f"/v1/orders/{created['id']}/retry", headers=alpha.headers)
    assert response.status_code == 409 and "reconciled" in response.json()["message"]
    _set(clean_db, created["id"], reason="reconcile_ambiguous", due_at=None)
    response = client.post(f"/v1/orders/{created['id']}/retry", headers=alpha.headers)
    assert response.status_code == 409 and "fresh look upstream" in response.json()["message"]
    by_filter = client.post("/v1/retries", headers=alpha.headers, json={"status": "submit_unknown"})
    assert by_filter.status_code == 409
    assert by_filter.json()["message"].startswith("1 held order(s) matched and none")
    view = client.get(f"/v1/orders/{created['id']}", headers=alpha.headers).json()
    assert (view["status"], view["reason"]) == ("submit_unknown", "reconcile_ambiguous")
    events = client.get(f"/v1/orders/{created['id']}/events", headers=alpha.headers).json()
    assert "operator_resubmit" not in {e["reason"] for e in events["items"]}


def test_retries_by_filter_work_through_many_chunks(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """A retry matching more orders than one chunk schedules every one of them, once."""
    from worker.actions.retry_filter import RETRY_CHUNK

    n = RETRY_CHUNK * 2 + 7
    batch = client.post(
        "/v1/orders/batch",
        json={"orders": [order(f"c{i}") for i in range(n)]},
        headers=alpha.headers,
    ).json()
    with transaction(clean_db) as session:
        session.execute(
            update(Order)
            .where(Order.batch_id == batch["batch_id"])
            .values(status="failed", reason="upstream_502", due_at=None)
        )
    response = client.post("/v1/retries", headers=alpha.headers, json={"reason": "upstream_502"})
    assert response.json() == {"scheduled": n}
    again = client.post("/v1/retries", headers=alpha.headers, json={"reason": "upstream_502"})
    assert again.json() == {"scheduled": 0}


def test_events_are_paged_with_a_cursor(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """A long history comes in pages, oldest first, each event exactly once."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    for _ in range(6):
        _set(clean_db, created["id"], status="failed", due_at=None)
        assert client.post(f"/v1/orders/{created['id']}/retry", headers=alpha.headers).is_success
    url = f"/v1/orders/{created['id']}/events"
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = client.get(url, headers=alpha.headers, params=params).json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    whole = client.get(url, headers=alpha.headers).json()
    assert pages == 2 and seen == whole["items"] and len(seen) == 7
    bad = client.get(url, headers=alpha.headers, params={"cursor": "bm90LWFuLWlk"})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "cursor"
