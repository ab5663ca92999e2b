"""GET /v1/orders: newest first, filters, and a cursor that holds while orders arrive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.api.conftest import CallerKey, order
from worker.db import transaction
from worker.models import Order


def _create(client: TestClient, caller: CallerKey, n: int, prefix: str) -> list[str]:
    body = {"orders": [order(f"{prefix}{i}") for i in range(n)]}
    results = client.post("/v1/orders/batch", json=body, headers=caller.headers).json()["results"]
    return [r["order"]["id"] for r in results]


def test_cursor_pages_stay_correct_while_orders_arrive(
    client: TestClient, alpha: CallerKey
) -> None:
    """Paging 2 at a time sees every original order once, in id order, despite new inserts."""
    original = _create(client, alpha, 7, "o")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        url = "/v1/orders?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=alpha.headers).json()
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        _create(client, alpha, 3, f"new{pages}-")
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(original, reverse=True)
    assert pages == 4


def test_first_page_shows_the_newest(client: TestClient, alpha: CallerKey) -> None:
    """Without a cursor the newest orders come first."""
    ids = _create(client, alpha, 3, "a") + _create(client, alpha, 2, "b")
    page = client.get("/v1/orders?limit=2", headers=alpha.headers).json()
    assert [i["id"] for i in page["items"]] == sorted(ids, reverse=True)[:2]
    assert page["next_cursor"]


def test_filters(client: TestClient, alpha: CallerKey, clean_db: str) -> None:
    """status (repeatable), external_id, batch_id and created_* narrow the list."""
    first = client.post(
        "/v1/orders/batch", json={"orders": [order("x1"), order("x2")]}, headers=alpha.headers
    ).json()
    batch_ids = [r["order"]["id"] for r in first["results"]]
    other = _create(client, alpha, 2, "y")
    past = datetime(2020, 1, 1, tzinfo=UTC)
    with transaction(clean_db) as session:
        session.execute(update(Order).where(Order.id == other[0]).values(status="failed"))
        session.execute(update(Order).where(Order.id == other[1]).values(created_at=past))

    def ids(query: str) -> list[str]:
        response = client.get(f"/v1/orders?{query}", headers=alpha.headers)
        assert response.status_code == 200, response.text
        return sorted(i["id"] for i in response.json()["items"])

    assert ids("status=failed") == [other[0]]
    assert ids("status=failed&status=received") == sorted(batch_ids + other)
    assert ids("external_id=x2") == [batch_ids[1]]
    assert ids(f"batch_id={first['batch_id']}") == sorted(batch_ids)
    since = quote((past + timedelta(days=1)).isoformat())
    assert ids(f"created_since={since}") == sorted([*batch_ids, other[0]])
    assert ids(f"created_before={since}") == [other[1]]
    assert ids("created_before=2020-01-02T00:00:00") == [other[1]]


@pytest.mark.parametrize(
    "query,field",
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("cursor=abc", "cursor"),
        ("cursor=" + "A" * 150, "cursor"),
        ("status=done", "status"),
        ("created_since=yesterday", "created_since"),
        ("created_since=0001-01-01T00:00:00%2B05:00", "created_since"),
    ],
)
def test_bad_list_parameters_are_422(
    client: TestClient, alpha: CallerKey, query: str, field: str
) -> None:
    """Invalid list parameters answer 422 naming the parameter."""
    response = client.get(f"/v1/orders?{query}", headers=alpha.headers)
    assert response.status_code == 422, response.text
    assert field in [f["field"].split(".")[0] for f in response.json()["fields"]]
