"""The console's hardening: security headers, sign-in throttling, flash messages only from
our own redirects, a Secure cookie behind a TLS proxy, bounded overview and webhook reads."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from tests.api.conftest import CallerKey, make_caller
from tests.helpers import add_orders, new_payload
from worker.db import get_engine, transaction
from worker.ids import utcnow
from worker.models import WebhookDelivery, WebhookEndpoint


@pytest.fixture
def ops(clean_db: str) -> CallerKey:
    return make_caller(clean_db, "olga", role="operator")


def _sign_in(client: TestClient, key: str) -> httpx.Response:
    return client.post("/console/login", data={"key": key}, follow_redirects=False)


def test_console_pages_carry_security_headers(client: TestClient, ops: CallerKey) -> None:
    """Every console answer (sign-in page, pages, redirects) forbids framing, caching and
    sniffing, and allows only our own script."""
    answers = [client.get("/console/login"), _sign_in(client, ops.key)]
    answers.append(client.get("/console/overview"))
    for answer in answers:
        headers = answer.headers
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["cache-control"] == "no-store"
        assert headers["x-content-type-options"] == "nosniff"


def test_wrong_sign_ins_are_throttled(api: Callable[..., TestClient], ops: CallerKey) -> None:
    """After ORDERS_CONSOLE_SIGNIN_FAILURES_PER_MINUTE wrong keys from one address, the next
    attempt answers 429 with Retry-After, even with the right key."""
    client = api(console_signin_failures_per_minute=5)
    codes = [_sign_in(client, f"ok_wrong{i}").status_code for i in range(5)]
    assert codes == [401] * 5
    refused = _sign_in(client, ops.key)
    assert refused.status_code == 429 and 50 <= int(refused.headers["retry-after"]) <= 60
    assert "Too many failed sign-ins" in refused.text


def test_messages_in_the_url_are_never_shown(client: TestClient, ops: CallerKey) -> None:
    """``?error=`` / ``?msg=`` text never reaches a page; our own redirect's message is shown
    once."""
    bait = "paste your key at https://evil.example"
    assert bait not in client.get(f"/console/login?error={bait}").text
    _sign_in(client, ops.key)
    assert bait not in client.get(f"/console/overview?msg={bait}").text
    page = client.get("/console/overview").text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    back = client.post(
        "/console/callers/revoke", data={"csrf": csrf, "name": "nobody"}, follow_redirects=False
    )
    assert back.status_code == 303 and "nobody" not in back.headers["location"]
    shown = client.get("/console/callers")
    assert "nobody" in shown.text  # the refusal, from our redirect's flash cookie
    assert "nobody" not in client.get("/console/callers").text  # shown once


def test_cookie_is_secure_behind_a_tls_proxy_when_configured(
    api: Callable[..., TestClient], ops: CallerKey
) -> None:
    """``ORDERS_CONSOLE_SECURE_COOKIE=true``: the session cookie is Secure over plain http
    too (TLS ended at a proxy); without it, only over https."""
    plain = _sign_in(api(), ops.key)
    assert "secure" not in plain.headers["set-cookie"].lower()
    secure = _sign_in(api(console_secure_cookie=True), ops.key)
    assert "secure" in secure.headers["set-cookie"].lower()


def test_overview_reads_the_database_once_for_many_tabs(
    client: TestClient, ops: CallerKey, clean_db: str
) -> None:
    """Ten tabs polling the live overview at once cost one set of database reads."""
    _sign_in(client, ops.key)
    assert client.get("/console/overview/live").status_code == 200
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = get_engine(clean_db)
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(10):
            assert client.get("/console/overview/live").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    orders_reads = [s for s in statements if "FROM orders" in s]
    assert orders_reads == [], orders_reads


def test_webhook_counts_read_only_recent_deliveries(
    client: TestClient, alpha: CallerKey, ops: CallerKey, clean_db: str
) -> None:
    """The webhooks page counts the last 24 hours of deliveries, not the whole log."""
    [order_id] = add_orders(clean_db, alpha.id, [new_payload(1)])
    now = utcnow()
    old = now - timedelta(days=3)
    with transaction(clean_db) as session:
        session.add(
            WebhookEndpoint(
                id="whe_1",
                caller_id=alpha.id,
                url="https://hooks.example/x",
                secret="whsec_x",
                event_types=None,
                enabled=True,
                created_at=old,
            )
        )
        session.flush()
        for i, at in enumerate([old, old, now]):
            session.add(
                WebhookDelivery(
                    id=f"msg_{int(at.timestamp() * 1000):012x}{i:020d}",
                    endpoint_id="whe_1",
                    order_id=order_id,
                    event_type="order.failed",
                    payload={},
                    status="failed",
                    attempts=1,
                    created_at=at,
                    updated_at=at,
                )
            )
    _sign_in(client, ops.key)
    page = client.get("/console/webhooks").text
    row = page.split("whe_1</a>", 1)[1].split("</tr>", 1)[0]
    assert '<td class="num">1</td>' in row and '<td class="num">3</td>' not in row


def test_a_bogus_retry_status_is_a_4xx_not_a_500(client: TestClient, ops: CallerKey) -> None:
    """``POST /console/retry`` with ``status=bogus`` answers 422 like its GET dry run."""
    _sign_in(client, ops.key)
    page = client.get("/console/overview").text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert client.get("/console/retry?status=bogus").status_code == 422
    answer = client.post("/console/retry", data={"csrf": csrf, "status": "bogus"})
    assert answer.status_code == 422 and "bogus orders cannot be retried" in answer.text
