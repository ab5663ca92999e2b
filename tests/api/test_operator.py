"""Operator API and console actions over HTTP: roles, CSRF, dry runs, spread, resolve."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api_stub.config import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, StubConfig
from api_stub.testing import StubControl, running_stub
from tests.api.conftest import CallerKey, make_caller, order, queued_ids
from tests.helpers import add_orders, new_payload
from worker.db import transaction
from worker.ids import utcnow
from worker.models import Order, OrderEvent


def fail(db_url: str, ids: list[str], reason: str = "upstream_502") -> None:
    with transaction(db_url) as session:
        session.execute(
            update(Order)
            .where(Order.id.in_(ids))
            .values(status="failed", reason=reason, due_at=None, next_attempt_at=None)
        )


def hold(db_url: str, ids: list[str]) -> None:
    with transaction(db_url) as session:
        session.execute(
            update(Order)
            .where(Order.id.in_(ids))
            .values(status="submit_unknown", reason="held_for_operator", due_at=None)
        )


def orders_of(db_url: str, ids: list[str]) -> dict[str, Order]:
    with transaction(db_url) as session:
        return {o.id: o for o in session.scalars(select(Order).where(Order.id.in_(ids)))}


def last_event(db_url: str, order_id: str) -> OrderEvent:
    with transaction(db_url) as session:
        event = session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id.desc())
        ).first()
        assert event is not None
        return event


@pytest.fixture
def ops(clean_db: str) -> CallerKey:
    return make_caller(clean_db, "olga", role="operator")


@pytest.fixture
def stub_url() -> Iterator[str]:
    with running_stub(StubConfig(seed=3, complete_after_s=0.0)) as url:
        yield url


def create_upstream(stub_url: str, payload: dict[str, Any]) -> str:
    """Submit ``payload`` straight to the stub (as if our lost submit had landed)."""
    with httpx.Client(base_url=stub_url) as http:
        token = http.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": DEMO_CLIENT_ID,
                "client_secret": DEMO_CLIENT_SECRET,
            },
        ).json()["access_token"]
        answer = http.post(
            "/api/partner/order", json=payload, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["id"])


def test_dry_run_counts_and_schedules_nothing(
    client: TestClient, alpha: CallerKey, clean_db: str, redis_client: Any
) -> None:
    """``dry_run`` answers the count and a sample; nothing moves, nothing is enqueued."""
    ids = add_orders(clean_db, alpha.id, [new_payload(i) for i in range(3)])
    fail(clean_db, ids)
    body = {"status": "failed", "reason": "upstream_502", "dry_run": True}
    answer = client.post("/v1/retries", json=body, headers=alpha.headers)
    assert answer.status_code == 200
    assert answer.json() == {"scheduled": 0, "matched": 3, "sample": sorted(ids)}
    assert {o.status for o in orders_of(clean_db, ids).values()} == {"failed"}
    assert queued_ids(redis_client) == []
    real = client.post("/v1/retries", json={"reason": "upstream_502"}, headers=alpha.headers)
    assert real.json() == {"scheduled": 3}


def test_large_retry_is_spread(
    api: Callable[..., TestClient], alpha: CallerKey, clean_db: str, redis_client: Any
) -> None:
    """At 2 orders/s, 5 orders: 2 go now, the others wait in the database 1 s and 2 s."""
    client = api(retry_spread_per_s=2)
    ids = add_orders(clean_db, alpha.id, [new_payload(i) for i in range(5)])
    fail(clean_db, ids)
    start = utcnow()
    assert client.post("/v1/retries", json={}, headers=alpha.headers).json() == {"scheduled": 5}
    assert sorted(queued_ids(redis_client)) == sorted(ids)[:2]
    rows = orders_of(clean_db, ids)
    later = sorted(rows[i].next_attempt_at for i in sorted(ids)[2:])  # type: ignore[type-var]
    offsets = [round((t - start).total_seconds()) for t in later]
    assert offsets == [1, 1, 2]


def test_operator_routes_need_an_operator_key(
    client: TestClient, alpha: CallerKey, ops: CallerKey
) -> None:
    """A caller key gets 403 on the operator API; an operator key gets 401 on /v1 calls."""
    assert client.post("/v1/operator/retries", json={}, headers=alpha.headers).status_code == 403
    assert client.post("/v1/operator/retries", json={}).status_code == 401
    assert client.post("/v1/retries", json={}, headers=ops.headers).status_code == 401


def test_operator_retries_any_caller_and_is_named(
    client: TestClient, alpha: CallerKey, beta: CallerKey, ops: CallerKey, clean_db: str
) -> None:
    """One operator retry covers every caller; each history row names the operator."""
    ids = add_orders(clean_db, alpha.id, [new_payload(1)]) + add_orders(
        clean_db, beta.id, [new_payload(2)]
    )
    fail(clean_db, ids)
    dry = client.post("/v1/operator/retries", json={"dry_run": True}, headers=ops.headers)
    assert dry.json()["matched"] == 2
    assert client.post("/v1/operator/retries", json={}, headers=ops.headers).json() == {
        "scheduled": 2
    }
    for order_id in ids:
        event = last_event(clean_db, order_id)
        assert (event.actor, event.reason) == ("operator:olga", "retry_scheduled")


def test_resolve_found_upstream_checks_external_id(
    api: Callable[..., TestClient], alpha: CallerKey, ops: CallerKey, clean_db: str, stub_url: str
) -> None:
    """Found upstream: the id is read upstream; a different external_id is refused (422),
    the right one moves the order on as reconciled, named after the operator."""
    client = api(upstream_url=stub_url)
    payload = new_payload(7)
    [order_id] = add_orders(clean_db, alpha.id, [payload])
    hold(clean_db, [order_id])
    other = create_upstream(stub_url, new_payload(8))
    ours = create_upstream(stub_url, payload)
    path = f"/v1/operator/orders/{order_id}/resolve"
    wrong = client.post(path, json={"upstream_id": other}, headers=ops.headers)
    assert wrong.status_code == 422 and "EXT-8" in wrong.json()["message"]
    missing = client.post(path, json={"upstream_id": "order-nope"}, headers=ops.headers)
    assert missing.status_code == 422
    assert orders_of(clean_db, [order_id])[order_id].status == "submit_unknown"
    answer = client.post(path, json={"upstream_id": ours}, headers=ops.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] in {"submitted", "complete"}
    assert answer.json()["upstream"]["id"] == ours
    event = last_event(clean_db, order_id)
    assert (event.actor, event.reason) == ("operator:olga", "reconciled")
    again = client.post(path, json={"not_created": True}, headers=ops.headers)
    assert again.status_code == 409


def test_resolve_refuses_an_upstream_id_that_is_a_path(
    api: Callable[..., TestClient], alpha: CallerKey, ops: CallerKey, clean_db: str, stub_url: str
) -> None:
    """``upstream_id`` "../../../../oauth2/token" is 422 naming the field; the stub sees no
    request outside the order objects."""
    client = api(upstream_url=stub_url)
    [order_id] = add_orders(clean_db, alpha.id, [new_payload(3)])
    hold(clean_db, [order_id])
    path = f"/v1/operator/orders/{order_id}/resolve"
    for bad in ("../../../../oauth2/token", "../../../../_stub/config"):
        answer = client.post(path, json={"upstream_id": bad}, headers=ops.headers)
        assert answer.status_code == 422, answer.text
        assert answer.json()["fields"][0]["field"] == "upstream_id"
    with StubControl(stub_url) as control:
        assert control.stats()["requests"].get("object", 0) == 0
    assert orders_of(clean_db, [order_id])[order_id].status == "submit_unknown"


def test_resolve_not_created_resubmits_after_a_fresh_look(
    api: Callable[..., TestClient],
    alpha: CallerKey,
    ops: CallerKey,
    clean_db: str,
    redis_client: Any,
    stub_url: str,
) -> None:
    """Not created upstream: a fresh look finds nothing, the held order goes back to
    previewed and is enqueued; the history row says what was looked at."""
    client = api(upstream_url=stub_url)
    [order_id] = add_orders(clean_db, alpha.id, [new_payload(1)])
    hold(clean_db, [order_id])
    path = f"/v1/operator/orders/{order_id}/resolve"
    assert client.post(path, json={}, headers=ops.headers).status_code == 422
    answer = client.post(path, json={"not_created": True}, headers=ops.headers)
    assert answer.status_code == 200 and answer.json()["status"] == "previewed"
    assert order_id in queued_ids(redis_client)
    event = last_event(clean_db, order_id)
    assert (event.actor, event.reason) == ("operator:olga", "operator_resubmit")
    assert "order list: no order with external_id 'EXT-1'" in (event.message or "")


def test_resolve_not_created_refuses_what_a_fresh_look_finds(
    api: Callable[..., TestClient],
    alpha: CallerKey,
    ops: CallerKey,
    clean_db: str,
    redis_client: Any,
    stub_url: str,
) -> None:
    """A held order whose external_id the upstream has (reconcile_ambiguous) is not
    re-submitted: 409 naming the upstream order, the look recorded, the order still held."""
    client = api(upstream_url=stub_url)
    payload = new_payload(5)
    [order_id] = add_orders(clean_db, alpha.id, [payload])
    hold(clean_db, [order_id])
    upstream_id = create_upstream(stub_url, payload)
    path = f"/v1/operator/orders/{order_id}/resolve"
    answer = client.post(path, json={"not_created": True}, headers=ops.headers)
    assert answer.status_code == 409 and upstream_id in answer.json()["message"]
    row = orders_of(clean_db, [order_id])[order_id]
    assert (row.status, row.due_at, row.reason) == ("submit_unknown", None, "held_for_operator")
    event = last_event(clean_db, order_id)
    assert (event.actor, event.reason) == ("operator:olga", "operator_lookup_found")
    assert upstream_id in (event.message or "")
    assert queued_ids(redis_client) == []


def test_resolve_not_created_refuses_when_the_upstream_cannot_be_searched(
    api: Callable[..., TestClient], alpha: CallerKey, ops: CallerKey, clean_db: str, stub_url: str
) -> None:
    """A 404 from the order list means "cannot look": refused, never guessed as "not there"."""
    client = api(upstream_url=stub_url)
    [order_id] = add_orders(clean_db, alpha.id, [new_payload(6)])
    hold(clean_db, [order_id])
    with StubControl(stub_url) as control:
        control.script("list", [{"status": 404}])
    path = f"/v1/operator/orders/{order_id}/resolve"
    answer = client.post(path, json={"not_created": True}, headers=ops.headers)
    assert answer.status_code == 409 and "no order list" in answer.json()["message"]
    assert orders_of(clean_db, [order_id])[order_id].status == "submit_unknown"
    event = last_event(clean_db, order_id)
    assert event.reason == "operator_lookup_unavailable"


def test_operator_bulk_and_one_retry_refuse_held_orders(
    client: TestClient, alpha: CallerKey, ops: CallerKey, clean_db: str, redis_client: Any
) -> None:
    """The operator's bulk retry and per-order retry never re-submit a held order: 409 with
    the count and the rule; the console's bulk page says so instead of offering it."""
    ids = add_orders(clean_db, alpha.id, [new_payload(i) for i in range(2)])
    hold(clean_db, ids)
    bulk = client.post(
        "/v1/operator/retries", json={"status": "submit_unknown"}, headers=ops.headers
    )
    assert bulk.status_code == 409 and bulk.json()["message"].startswith("2 held order(s)")
    one = client.post(f"/v1/operator/orders/{ids[0]}/retry", json={}, headers=ops.headers)
    assert one.status_code == 409 and "fresh look upstream" in one.json()["message"]
    _sign_in(client, ops.key)
    page = client.get("/console/retry?status=submit_unknown")
    assert page.status_code == 409 and "2 held orders match" in page.text
    csrf = _csrf(client)
    client.post("/console/retry", data={"csrf": csrf, "status": "submit_unknown"})
    assert {o.status for o in orders_of(clean_db, ids).values()} == {"submit_unknown"}
    assert queued_ids(redis_client) == []


def test_resolve_found_refuses_an_upstream_order_tied_to_another(
    api: Callable[..., TestClient],
    alpha: CallerKey,
    beta: CallerKey,
    ops: CallerKey,
    clean_db: str,
    stub_url: str,
) -> None:
    """Caller A's order is complete as X (external_id shared-1); caller B's held order sent
    shared-1 too: "found as X" for B answers 409 naming A's order, and B stays held."""
    client = api(upstream_url=stub_url)
    payload = {**new_payload(9), "external_id": "shared-1"}
    [a_id] = add_orders(clean_db, alpha.id, [payload])
    [b_id] = add_orders(clean_db, beta.id, [payload])
    upstream_id = create_upstream(stub_url, payload)
    with transaction(clean_db) as session:
        session.execute(
            update(Order)
            .where(Order.id == a_id)
            .values(status="complete", upstream_id=upstream_id, due_at=None)
        )
    hold(clean_db, [b_id])
    path = f"/v1/operator/orders/{b_id}/resolve"
    answer = client.post(path, json={"upstream_id": upstream_id}, headers=ops.headers)
    assert answer.status_code == 409, answer.text
    assert a_id in answer.json()["message"] and "already tied" in answer.json()["message"]
    row = orders_of(clean_db, [b_id])[b_id]
    assert (row.status, row.upstream_id) == ("submit_unknown", None)
    view = client.get(f"/v1/orders/{b_id}", headers=beta.headers).json()
    assert view["upstream"] is None


def _csrf(client: TestClient) -> str:
    """The signed-in session's CSRF token, as the pages embed it."""
    page = client.get("/console/overview").text
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def _sign_in(client: TestClient, key: str) -> httpx.Response:
    return client.post("/console/login", data={"key": key}, follow_redirects=False)


def test_console_sign_in_roles(client: TestClient, alpha: CallerKey, ops: CallerKey) -> None:
    """A caller key never opens the console; an operator key gets an HttpOnly, Strict cookie."""
    assert _sign_in(client, alpha.key).status_code == 403
    assert _sign_in(client, "ok_nope").status_code == 401
    assert client.get("/console/overview", follow_redirects=False).status_code == 303
    answer = _sign_in(client, ops.key)
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=28800" in cookie
    assert client.get("/console/overview").status_code == 200


def test_console_action_needs_the_csrf_token(
    client: TestClient, alpha: CallerKey, ops: CallerKey, clean_db: str
) -> None:
    """A POST with the session cookie but without (or with another) CSRF token is refused."""
    [order_id] = add_orders(clean_db, alpha.id, [order()])
    fail(clean_db, [order_id])
    _sign_in(client, ops.key)
    for data in ({}, {"csrf": "forged"}):
        refused = client.post(f"/console/orders/{order_id}/retry", data=data)
        assert refused.status_code == 403
    assert orders_of(clean_db, [order_id])[order_id].status == "failed"


def test_console_session_ends_when_the_key_is_revoked(
    client: TestClient, ops: CallerKey, clean_db: str
) -> None:
    """Revoking an operator key ends its console sessions at the next request."""
    _sign_in(client, ops.key)
    assert client.get("/console/callers").status_code == 200
    from worker.intake.callers import revoke

    with transaction(clean_db) as session:
        revoke(session, "olga", now=utcnow() - timedelta(seconds=1))
    assert client.get("/console/callers", follow_redirects=False).status_code == 303


def test_console_session_ends_on_rotation_and_sign_out(
    api: Callable[..., TestClient], ops: CallerKey, clean_db: str
) -> None:
    """After the key is rotated the old cookie no longer opens a page; after sign-out the
    same cookie (replayed) is refused too."""
    from worker.console.session import COOKIE
    from worker.intake.callers import rotate

    client = api()
    _sign_in(client, ops.key)
    old_cookie = client.cookies[COOKIE]
    assert client.get("/console/callers").status_code == 200
    with transaction(clean_db) as session:
        _, new_key = rotate(session, "olga")
    assert client.get("/console/callers", follow_redirects=False).status_code == 303
    replay = api()
    replay.cookies.set(COOKIE, old_cookie, path="/console")
    assert replay.get("/console/callers", follow_redirects=False).status_code == 303

    client.cookies.clear()
    _sign_in(client, new_key)
    cookie = client.cookies[COOKIE]
    assert client.get("/console/callers").status_code == 200
    out = client.post("/console/logout", data={"csrf": _csrf(client)}, follow_redirects=False)
    assert out.status_code == 303
    replay = api()
    replay.cookies.set(COOKIE, cookie, path="/console")
    assert replay.get("/console/callers", follow_redirects=False).status_code == 303
    _sign_in(client, new_key)
    assert client.get("/console/callers").status_code == 200


def test_every_console_page_renders(
    client: TestClient, alpha: CallerKey, ops: CallerKey, clean_db: str
) -> None:
    """Each page answers 200 with failed, held and batch orders present."""
    batch = client.post(
        "/v1/orders/batch", json={"orders": [order("B-1"), order("B-2")]}, headers=alpha.headers
    ).json()
    ids = add_orders(clean_db, alpha.id, [new_payload(i) for i in range(3)])
    fail(clean_db, ids[1:])
    hold(clean_db, ids[:1])
    _sign_in(client, ops.key)
    pages = {
        "/console/overview": "failed",
        "/console/overview/live": "Orders by status",
        "/console/attention": "upstream_502",
        "/console/retry?status=failed&reason=upstream_502": "This will retry",
        "/console/batches": batch["batch_id"],
        "/console/orders?status=failed": ids[1],
        f"/console/orders/{ids[0]}": "Found upstream",
        "/console/webhooks": "Webhooks",
        "/console/callers": "olga",
    }
    for path, text in pages.items():
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert text in answer.text, path
