"""Polling an order view cheaply: ``ETag``, ``Cache-Control: no-store`` and ``304``."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.api.conftest import CallerKey, order
from worker.api.order_reads import not_modified
from worker.db import transaction
from worker.models import Order


def test_order_view_carries_a_strong_etag_and_no_store(
    client: TestClient, alpha: CallerKey
) -> None:
    """The answer has a quoted (strong) ETag, stable across reads, and ``no-store``."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    first = client.get(f"/v1/orders/{created['id']}", headers=alpha.headers)
    second = client.get(f"/v1/orders/{created['id']}", headers=alpha.headers)
    tag = first.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"') and len(tag) > 10
    assert second.headers["etag"] == tag
    assert first.headers["cache-control"] == "no-store"


def test_if_none_match_answers_304_without_a_body_until_the_order_changes(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """The same ETag gets 304 with no body; once the order moves, 200 with the new view and
    a new ETag."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    url = f"/v1/orders/{created['id']}"
    tag = client.get(url, headers=alpha.headers).headers["etag"]
    unchanged = client.get(url, headers={**alpha.headers, "If-None-Match": tag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == tag
    assert unchanged.headers["cache-control"] == "no-store"
    with transaction(clean_db) as session:
        session.execute(update(Order).where(Order.id == created["id"]).values(status="complete"))
    changed = client.get(url, headers={**alpha.headers, "If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.json()["status"] == "complete"
    assert changed.headers["etag"] != tag


def test_a_stale_or_foreign_etag_gets_the_full_view(client: TestClient, alpha: CallerKey) -> None:
    """An ETag that does not match answers 200 with the body."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    answer = client.get(
        f"/v1/orders/{created['id']}", headers={**alpha.headers, "If-None-Match": '"nope"'}
    )
    assert answer.status_code == 200
    assert answer.json()["id"] == created["id"]


def test_if_none_match_never_reveals_another_callers_order(
    client: TestClient, alpha: CallerKey, beta: CallerKey
) -> None:
    """Another caller's order is 404 even with ``If-None-Match: *``."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    answer = client.get(
        f"/v1/orders/{created['id']}", headers={**beta.headers, "If-None-Match": "*"}
    )
    assert answer.status_code == 404


def test_if_none_match_list_weak_and_star_forms() -> None:
    """A list of tags, a weak tag (``W/``) and ``*`` match; an empty header or others do not."""
    tag = '"abc"'
    assert not_modified('"x", "abc"', tag)
    assert not_modified('W/"abc"', tag)
    assert not_modified("*", tag)
    assert not not_modified(None, tag)
    assert not not_modified("", tag)
    assert not not_modified('"abcd", "ab"', tag)


def test_openapi_documents_the_view_the_etag_and_304(client: TestClient) -> None:
    """The schema still names OrderView for 200 and documents 304 and the ETag header."""
    spec = client.get("/openapi.json").json()
    get = spec["paths"]["/v1/orders/{order_id}"]["get"]
    ok = get["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/OrderView")
    assert "ETag" in ok["headers"]
    assert "304" in get["responses"]
    assert any(p["name"] == "If-None-Match" for p in get["parameters"])
