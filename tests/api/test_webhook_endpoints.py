"""Webhook endpoints over HTTP: create with a secret, list, delete, SSRF refusal."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import CallerKey, make_caller, row_counts


def test_create_list_delete(client: TestClient, alpha: CallerKey) -> None:
    """POST answers 201 with a whsec_ secret shown once; DELETE removes it from the list."""
    response = client.post(
        "/v1/webhook-endpoints",
        headers=alpha.headers,
        json={"url": "http://127.0.0.1:9/hooks", "event_types": ["order.failed", "order.complete"]},
    )
    assert response.status_code == 201
    created = response.json()
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 24
    assert created["event_types"] == ["order.complete", "order.failed"]
    assert created["enabled"] is True
    listed = client.get("/v1/webhook-endpoints", headers=alpha.headers).json()["items"]
    assert [e["id"] for e in listed] == [created["id"]]
    assert "secret" not in listed[0]
    deleted = client.delete(f"/v1/webhook-endpoints/{created['id']}", headers=alpha.headers)
    assert deleted.status_code == 204
    assert client.get("/v1/webhook-endpoints", headers=alpha.headers).json()["items"] == []
    assert (
        client.delete(f"/v1/webhook-endpoints/{created['id']}", headers=alpha.headers).status_code
        == 404
    )
    assert (
        client.get(
            f"/v1/webhook-endpoints/{created['id']}/deliveries", headers=alpha.headers
        ).status_code
        == 404
    )


def test_each_endpoint_gets_its_own_secret(client: TestClient, alpha: CallerKey) -> None:
    """Two endpoints never share a signing secret."""
    secrets = {
        client.post(
            "/v1/webhook-endpoints", headers=alpha.headers, json={"url": f"http://127.0.0.1:9/{i}"}
        ).json()["secret"]
        for i in range(3)
    }
    assert len(secrets) == 3


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8000/",
        "http://0.0.0.0/",
        "http://100.100.100.200/",
        "http://[::ffff:127.0.0.1]/",
        "http://192.168.1.1/",
        "http://2130706433/",
    ],
)
def test_private_targets_are_refused(
    api: Callable[..., TestClient], alpha: CallerKey, clean_db: str, url: str
) -> None:
    """With private targets not allowed, an internal URL is 422 naming ``url``."""
    client = api(webhook_allow_private=False)
    response = client.post("/v1/webhook-endpoints", headers=alpha.headers, json={"url": url})
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == "url"
    assert row_counts(clean_db)["webhook_endpoints"] == 0


@pytest.mark.parametrize(
    "body,field",
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "http://[::1"}, "url"),
        ({"url": "http://x:99999/"}, "url"),
        ({"url": "http://exa mple.com/"}, "url"),
        ({"url": "/relative"}, "url"),
        ({"url": ""}, "url"),
        ({"url": 5}, "url"),
        ({}, "url"),
        ({"url": "http://127.0.0.1/", "event_types": ["order.shipped"]}, "event_types.0"),
        ({"url": "http://127.0.0.1/", "event_types": "order.failed"}, "event_types"),
        ({"url": "http://127.0.0.1/", "extra": 1}, "extra"),
    ],
)
def test_invalid_endpoint_bodies_are_422(
    client: TestClient, alpha: CallerKey, clean_db: str, body: object, field: str
) -> None:
    """Bad endpoint bodies are 422 naming the field; nothing is stored."""
    response = client.post("/v1/webhook-endpoints", headers=alpha.headers, json=body)
    assert response.status_code == 422, response.text
    assert field in [f["field"] for f in response.json()["fields"]]
    assert row_counts(clean_db)["webhook_endpoints"] == 0


def test_endpoints_per_caller_are_capped(
    api: Callable[..., TestClient], alpha: CallerKey, beta: CallerKey
) -> None:
    """Beyond ORDERS_WEBHOOK_MAX_ENDPOINTS_PER_CALLER a registration is 409 with the limit;
    a deleted endpoint frees its place; another caller has its own allowance."""
    client = api(webhook_max_endpoints_per_caller=2)

    def register(caller: CallerKey, n: int) -> object:
        url = f"http://127.0.0.1:9/{n}"
        return client.post("/v1/webhook-endpoints", headers=caller.headers, json={"url": url})

    first, _ = register(alpha, 1), register(alpha, 2)
    refused = register(alpha, 3)
    assert refused.status_code == 409  # type: ignore[attr-defined]
    assert "at most 2" in refused.json()["message"]  # type: ignore[attr-defined]
    assert register(beta, 1).status_code == 201  # type: ignore[attr-defined]
    endpoint_id = first.json()["id"]  # type: ignore[attr-defined]
    client.delete(f"/v1/webhook-endpoints/{endpoint_id}", headers=alpha.headers)
    assert register(alpha, 4).status_code == 201  # type: ignore[attr-defined]


def test_a_slow_nameserver_never_stalls_the_api(
    api: Callable[..., TestClient], clean_db: str
) -> None:
    """50 registrations whose names take 3 s to resolve (from 5 callers) answer 422 within
    the resolve timeout, and meanwhile every other call is served at once: the look-ups never
    sit on the shared thread pool."""
    import threading
    import time

    from worker.api.webhook_guard import RegistrationGuard

    client = api(webhook_allow_private=False)
    release = threading.Event()

    def slow_resolve(host: str, port: int) -> list[Any]:
        release.wait(3)
        raise OSError("no answer")

    client.app.state.webhook_guard = RegistrationGuard(  # type: ignore[attr-defined]
        per_minute=10, resolve_timeout_s=0.5, resolve=slow_resolve
    )
    callers = [make_caller(clean_db, f"slow-{i}") for i in range(5)]
    statuses: list[int] = []

    def register(caller: CallerKey) -> None:
        body = {"url": "https://slow.example/hook"}
        statuses.append(
            client.post("/v1/webhook-endpoints", json=body, headers=caller.headers).status_code
        )

    threads = [threading.Thread(target=register, args=(c,)) for c in callers for _ in range(10)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    latencies = []
    for _ in range(5):
        start = time.monotonic()
        assert client.get("/v1/orders", headers=callers[0].headers).status_code == 200
        latencies.append(time.monotonic() - start)
    for thread in threads:
        thread.join(10)
    release.set()
    # A stalled pool would make every call wait for the resolvers; one slow call on a busy box
    # is not that.
    assert sorted(latencies)[2] < 0.5, latencies
    assert statuses == [422] * 50


def test_registrations_per_caller_are_rate_limited(
    api: Callable[..., TestClient], alpha: CallerKey, beta: CallerKey
) -> None:
    """Beyond ORDERS_WEBHOOK_REGISTRATIONS_PER_MINUTE a minute: 429 with Retry-After."""
    client = api(webhook_registrations_per_minute=3, webhook_max_endpoints_per_caller=10)
    body = {"url": "http://127.0.0.1:9/hook"}
    codes = [
        client.post("/v1/webhook-endpoints", json=body, headers=alpha.headers).status_code
        for _ in range(4)
    ]
    assert codes == [201, 201, 201, 429]
    refused = client.post("/v1/webhook-endpoints", json=body, headers=alpha.headers)
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert client.post("/v1/webhook-endpoints", json=body, headers=beta.headers).status_code == 201
