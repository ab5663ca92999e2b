"""Bad input never writes anything, never enqueues, never answers 5xx, and names the field."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from schemas.upstream import KNOWN_ORDER_TYPES
from tests.api.conftest import CallerKey, order, row_counts

NOT_STRINGS: list[Any] = [0, 1.5, True, [], {}, [1, "x"]]
WRONG_VALUES: dict[str, list[Any]] = {
    "checkoutId": [None, "", *NOT_STRINGS],
    "country": [None, "", *NOT_STRINGS],
    "external_id": NOT_STRINGS,
    "orderItems": [None, 0, "text", True, {}, [], [1, "x"], [{}], [{"offer": {"id": "x"}}]],
    "billingDetails": [None, 0, 1.5, True, "text", [], [1, "x"], {"email": 5}],
    "payment": [None, 0, "text", True, [], {}, {"a": None}, {"type": 3}],
    "process_immediately": [None, 0, 1, "true", [], {}],
    "orderDate": [0, 1.5, True, "text", "2025-13-01", [], {}],
}
REQUIRED_NEW = ["order_type", "orderItems", "billingDetails", "payment", "checkoutId", "country"]
MALFORMED_JSON = [
    b"",
    b" ",
    b"{",
    b"}",
    b"[",
    b"{'a': 1}",
    b'{"a": }',
    b"nul",
    b"NaN",
    b"1e400",
    b'{"a": 1,}',
    b'"\\ud800"',
    b"\xff\xfe",
    b'{"order_type": "new"',
    b"[1, 2",
    b"tru",
    b'{"a": 1e999}',
    b"\x00",
    b'{"a":"\x01\x02"} x',
    b"//",
]


def _nested(depth: int, leaf: str = "1") -> bytes:
    """An order whose customFields nest ``depth`` levels (raw JSON: too deep to serialise)."""
    base = orjson.dumps(order())[:-1]
    return base + b', "customFields": ' + b'{"a": ' * depth + leaf.encode() + b"}" * depth + b"}"


def _raw(body: Any) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


def _mutations() -> Iterator[tuple[str, Any, str]]:
    """(label, body, field expected in the answer) for single-order bodies."""
    base = order()
    for name in REQUIRED_NEW:
        body = copy.deepcopy(base)
        del body[name]
        yield f"missing {name}", body, name
    for name, values in WRONG_VALUES.items():
        for value in values:
            body = copy.deepcopy(base)
            body[name] = value
            yield f"{name}={value!r}", body, name
    for path, value, field in [
        (("orderItems", 0, "offer"), None, "orderItems.0.offer"),
        (("orderItems", 0, "offer", "id"), 5, "orderItems.0.offer.id"),
        (("orderItems", 0, "quantity"), "2", "orderItems.0.quantity"),
        (("payment", "type"), "", "payment.type"),
        (("billingDetails", "email"), ["x"], "billingDetails.email"),
        (("country",), "G\x00B", "country"),
        (("billingDetails", "city"), "Lon\x00don", "billingDetails.city"),
        (("external_id",), "x" * 201, "external_id"),
    ]:
        body = copy.deepcopy(base)
        target = body
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        yield f"{'.'.join(map(str, path))}={value!r}", body, field
    for order_type in sorted(KNOWN_ORDER_TYPES - {"new"}):
        yield f"bad {order_type}", {"order_type": order_type, "external_id": 5}, ""
        yield f"bad date {order_type}", {"order_type": order_type, "orderDate": "x"}, "orderDate"
    for order_type in [
        "change_offer",
        "add_offer",
        "cancel_subscription",
        "change_address",
        "change_payment",
        "update_subscription",
    ]:
        yield f"no subscription {order_type}", {"order_type": order_type}, ""
        yield (
            f"subscription wrong type {order_type}",
            {"order_type": order_type, "forSubscription": "sub-1"},
            "forSubscription",
        )
    for depth in (260, 1000):
        yield f"nested {depth} deep", _nested(depth), "customFields"
        yield f"nested {depth} deep with NUL", _nested(depth, '"\\u0000"'), "customFields"
    yield "unknown type", {**base, "order_type": "teleport"}, "order_type"
    yield "type not a string", {**base, "order_type": ["new"]}, "order_type"
    for value in [None, 1, "x", [], True]:
        yield f"body={value!r}", value, "(root)"
    yield "NUL key", {**base, "bad\x00key": 1}, "bad\x00key"


def _batch_mutations() -> Iterator[tuple[str, Any, str]]:
    yield "no orders", {}, "orders"
    yield "orders null", {"orders": None}, "orders"
    yield "orders object", {"orders": {"0": order()}}, "orders"
    yield "orders empty", {"orders": []}, "orders"
    yield "orders string", {"orders": "x"}, "orders"
    yield "a list", [order()], "(root)"
    for label, body, field in _mutations():
        named = f"orders.1.{field}" if field else "orders.1"
        yield (
            f"all invalid: {label}",
            b'{"orders": [{"order_type": "?"}, ' + _raw(body) + b"]}",
            named,
        )


MUTATIONS = list(_mutations())
BATCH_MUTATIONS = list(_batch_mutations())


def _assert_error(response: Any, field: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["fields"], list)
    if field:
        assert any(f["field"].startswith(field) for f in body["fields"]), body


def test_bad_input_matrix_changes_nothing(
    client: TestClient, alpha: CallerKey, clean_db: str, redis_client: redis.Redis
) -> None:
    """Hundreds of malformed requests all answer 4xx naming the field; no row, no message."""
    sent = 0
    for raw in MALFORMED_JSON:
        for path in ("/v1/orders", "/v1/orders/batch"):
            response = client.post(
                path, content=raw, headers={**alpha.headers, "content-type": "application/json"}
            )
            _assert_error(response, "(root)")
            assert response.status_code == 400
            sent += 1
    for label, body, field in MUTATIONS:
        response = client.post(
            "/v1/orders",
            content=_raw(body),
            headers={**alpha.headers, "Idempotency-Key": f"k-{sent}"},
        )
        assert response.status_code in (400, 422), label
        _assert_error(response, field)
        sent += 1
    for label, body, field in BATCH_MUTATIONS:
        response = client.post("/v1/orders/batch", content=_raw(body), headers=alpha.headers)
        assert response.status_code == 422, label
        _assert_error(response, field)
        sent += 1
    for query in [
        "limit=-1",
        "limit=99999",
        "status=nope",
        "cursor=%%%",
        "created_since=x",
        "external_id=" + "x" * 300,
        "batch_id=",
        "limit=1e3",
    ]:
        _assert_error(client.get(f"/v1/orders?{query}", headers=alpha.headers), "")
        sent += 1
    for body in [
        {"status": "complete"},
        {"at": "soon"},
        {"reason": 5},
        {"batch_id": "a\x00"},
        {"unknown": 1},
        [1],
        "x",
    ]:
        _assert_error(client.post("/v1/retries", json=body, headers=alpha.headers), "")
        sent += 1
    assert sent > 300
    assert sum(row_counts(clean_db).values()) == 0
    assert redis_client.llen("orders") == 0
    assert redis_client.llen("webhooks") == 0


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    "path,setting", [("/v1/orders", "max_body_bytes"), ("/v1/orders/batch", "max_batch_bytes")]
)
@pytest.mark.parametrize("streamed", [False, True])
def test_oversized_body_is_413(
    api: Callable[..., TestClient],
    alpha: CallerKey,
    clean_db: str,
    path: str,
    setting: str,
    streamed: bool,
) -> None:
    """A body over its limit answers 413, declared (Content-Length) or streamed (chunked)."""
    client = api(**{setting: 5000})
    payload = order(checkoutId="x" * 6000)
    body = orjson.dumps(payload if path == "/v1/orders" else {"orders": [payload]})
    content: Any = _chunks(body) if streamed else body
    response = client.post(
        path, content=content, headers={**alpha.headers, "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "bytes" in response.json()["message"]
    assert response.json()["fields"] == [{"field": "(root)", "message": "at most 5000 bytes"}]
    assert sum(row_counts(clean_db).values()) == 0
    small = orjson.dumps(order() if path == "/v1/orders" else {"orders": [order()]})
    ok = client.post(
        path, content=_chunks(small, 100) if streamed else small, headers=alpha.headers
    )
    assert ok.status_code == 202


def test_batch_limit_is_separate_from_the_order_limit(
    api: Callable[..., TestClient], alpha: CallerKey
) -> None:
    """A batch larger than ORDERS_MAX_BODY_BYTES is fine under ORDERS_MAX_BATCH_BYTES."""
    client = api(max_body_bytes=2000, max_batch_bytes=100_000)
    body = {"orders": [order(f"e{i}") for i in range(20)]}
    assert len(orjson.dumps(body)) > 2000
    assert client.post("/v1/orders/batch", json=body, headers=alpha.headers).status_code == 202


def test_small_bodies_elsewhere_are_limited_too(
    api: Callable[..., TestClient], alpha: CallerKey
) -> None:
    """Other JSON endpoints obey ORDERS_MAX_BODY_BYTES."""
    client = api(max_body_bytes=100)
    response = client.post(
        "/v1/webhook-endpoints",
        headers=alpha.headers,
        json={"url": "http://127.0.0.1/" + "x" * 200},
    )
    assert response.status_code == 413
