"""Numbers intake refuses rather than alters: integers beyond 64 bits (orjson would turn them
into floats) and negative quantities, each a 422 naming the field, with nothing written."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import CallerKey, order, row_counts
from worker.intake.numbers import oversized_integer_path

BIG = "123456789012345678901234567890"


def _json(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


def _post(client: TestClient, alpha: CallerKey, path: str, body: str):  # type: ignore[no-untyped-def]
    headers = {**alpha.headers, "Content-Type": "application/json"}
    return client.post(path, content=body.encode(), headers=headers)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (f'{{"a": {BIG}}}', "a"),
        (f'{{"a": [1, {{"b": -{BIG}}}]}}', "a.1.b"),
        ('{"a": 9223372036854775808}', "a"),
        ('{"a": -9223372036854775809}', "a"),
        (BIG, "(root)"),
        ('{"a": 9223372036854775807, "b": -9223372036854775808}', None),
        (f'{{"phone": "{BIG}", "x": 1.5e300}}', None),
    ],
)
def test_oversized_integer_path(body: str, path: str | None) -> None:
    """Integer literals outside the signed 64-bit range are found by path; long digit
    strings and float literals are not integers."""
    assert oversized_integer_path(body.encode()) == path


def test_big_integer_in_one_order_is_422_naming_the_field(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    body = _json(order("N-1")).replace('"quantity":1', f'"quantity":{BIG}')
    response = _post(client, alpha, "/v1/orders", body)
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "orderItems.0.quantity"
    assert row_counts(clean_db)["orders"] == 0


def test_big_integer_in_a_batch_is_422_naming_the_item_field(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    good = _json(order("N-1"))
    bad = _json(order("N-2", checkoutId="x")).replace('"x"', BIG)
    response = _post(client, alpha, "/v1/orders/batch", f'{{"orders": [{good}, {bad}]}}')
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "orders.1.checkoutId"
    assert row_counts(clean_db)["orders"] == 0


def test_negative_quantity_is_422_naming_the_field(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    payload = order("N-1", orderItems=[{"offer": {"id": "a", "version": "b"}, "quantity": -2}])
    response = client.post("/v1/orders", json=payload, headers=alpha.headers)
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["fields"]] == ["orderItems.0.quantity"]
    batch = client.post(
        "/v1/orders/batch", json={"orders": [order("N-2"), payload]}, headers=alpha.headers
    )
    assert batch.status_code == 202
    assert batch.json()["results"][1]["error"]["fields"][0]["field"] == "orderItems.0.quantity"
    assert row_counts(clean_db)["orders"] == 1
