"""Idempotency over HTTP: Idempotency-Key and external_id replays, 422 and 409 cases."""

from __future__ import annotations

import threading
from datetime import timedelta

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.api.conftest import CallerKey, order, row_counts
from worker.db import transaction
from worker.errors import KeyInFlight
from worker.ids import utcnow
from worker.intake import idempotency as idem
from worker.intake.checks import request_hash
from worker.intake.idempotency import IN_FLIGHT_S
from worker.models import IdempotencyKey


def _with_key(caller: CallerKey, key: str) -> dict[str, str]:
    return {**caller.headers, "Idempotency-Key": key}


def _insert_key(
    db_url: str,
    caller_id: str,
    key: str,
    payload_hash: str,
    age_s: float = 0,
    ttl_s: float = 3600,
    resource_id: str | None = None,
) -> None:
    created = utcnow() - timedelta(seconds=age_s)
    with transaction(db_url) as session:
        session.add(
            IdempotencyKey(
                caller_id=caller_id,
                key=key,
                request_hash=payload_hash,
                resource_id=resource_id,
                created_at=created,
                expires_at=created + timedelta(seconds=ttl_s),
            )
        )


def test_same_key_same_payload_replays_the_original(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """The second request answers the same order (200, replay header) and stores nothing."""
    payload = order(None)
    first = client.post("/v1/orders", json=payload, headers=_with_key(alpha, "k-1"))
    second = client.post("/v1/orders", json=payload, headers=_with_key(alpha, '"k-1"'))
    assert first.status_code == 202
    assert second.status_code == 200 and second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert row_counts(clean_db)["orders"] == 1


def test_same_key_different_payload_is_422(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """Reusing a key for another payload is refused, naming the header; nothing is stored."""
    client.post("/v1/orders", json=order(None), headers=_with_key(alpha, "k-2"))
    response = client.post(
        "/v1/orders", json=order(None, country="FR"), headers=_with_key(alpha, "k-2")
    )
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "Idempotency-Key"
    assert row_counts(clean_db)["orders"] == 1


def test_key_in_flight_is_409(client: TestClient, alpha: CallerKey, clean_db: str) -> None:
    """A key whose first request has not finished (no resource yet) answers 409."""
    payload = order(None)
    _insert_key(clean_db, alpha.id, "k-3", request_hash(payload))
    response = client.post("/v1/orders", json=payload, headers=_with_key(alpha, "k-3"))
    assert response.status_code == 409
    assert response.json()["message"]
    assert row_counts(clean_db)["orders"] == 0


def test_stale_in_flight_key_is_taken_over(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """A key left in flight by a crashed request is usable again after the stale bound."""
    payload = order(None)
    _insert_key(clean_db, alpha.id, "k-4", request_hash(payload), age_s=IN_FLIGHT_S + 5)
    response = client.post("/v1/orders", json=payload, headers=_with_key(alpha, "k-4"))
    assert response.status_code == 202


def test_key_left_in_flight_by_a_database_restart_is_usable_within_seconds(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """Claim committed, store and release failed with the database: a retry 15 s later works,
    while a claim 1 s old (a request still being handled) still answers 409."""
    payload = order(None)
    _insert_key(clean_db, alpha.id, "k-db", request_hash(payload), age_s=15)
    _insert_key(clean_db, alpha.id, "k-live", request_hash(payload), age_s=1)
    retried = client.post("/v1/orders", json=payload, headers=_with_key(alpha, "k-db"))
    assert retried.status_code == 202
    live = client.post("/v1/orders", json=payload, headers=_with_key(alpha, "k-live"))
    assert live.status_code == 409
    assert row_counts(clean_db)["orders"] == 1


def test_a_claim_taken_over_can_no_longer_complete_or_release(
    alpha: CallerKey, clean_db: str
) -> None:
    """A request still running past its claim loses the key: its completion raises (so its
    transaction rolls back) and its release leaves the newer claim alone."""
    now = utcnow()
    old_at = now - timedelta(seconds=IN_FLIGHT_S + 1)
    claim = {"request_hash": "h" * 64, "ttl_s": 3600}
    assert idem.claim(clean_db, alpha.id, "k-late", now=old_at, **claim) is None
    assert idem.claim(clean_db, alpha.id, "k-late", now=now, **claim) is None
    with pytest.raises(KeyInFlight), transaction(clean_db) as session:
        idem.complete(session, alpha.id, "k-late", "ord_" + "1" * 32, claimed_at=old_at)
    idem.release(clean_db, alpha.id, "k-late", claimed_at=old_at)
    with transaction(clean_db) as session:
        idem.complete(session, alpha.id, "k-late", "ord_" + "2" * 32, claimed_at=now)
    with transaction(clean_db) as session:
        row = session.get(IdempotencyKey, (alpha.id, "k-late"))
        assert row is not None and row.resource_id == "ord_" + "2" * 32


def test_expired_key_starts_afresh(client: TestClient, alpha: CallerKey, clean_db: str) -> None:
    """After its TTL a key acts as new, even with another payload."""
    _insert_key(
        clean_db, alpha.id, "k-5", "0" * 64, age_s=100, ttl_s=10, resource_id="ord_" + "0" * 32
    )
    response = client.post("/v1/orders", json=order(None), headers=_with_key(alpha, "k-5"))
    assert response.status_code == 202
    with transaction(clean_db) as session:
        row = session.get(IdempotencyKey, (alpha.id, "k-5"))
        assert row is not None and row.resource_id == response.json()["id"]


def test_rejected_request_does_not_use_up_the_key(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """An invalid payload writes no key row: the same key then works for a valid one."""
    bad = client.post("/v1/orders", json={"order_type": "new"}, headers=_with_key(alpha, "k-6"))
    assert bad.status_code == 422
    assert row_counts(clean_db)["idempotency_keys"] == 0
    good = client.post("/v1/orders", json=order(None), headers=_with_key(alpha, "k-6"))
    assert good.status_code == 202


def test_external_id_conflict_releases_the_key(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """A key whose request failed on a duplicate external_id is released, not left in flight."""
    client.post("/v1/orders", json=order("dup"), headers=alpha.headers)
    refused = client.post(
        "/v1/orders", json=order("dup", country="FR"), headers=_with_key(alpha, "k-7")
    )
    assert refused.status_code == 422
    assert refused.json()["fields"][0]["field"] == "external_id"
    assert row_counts(clean_db)["idempotency_keys"] == 0


@pytest.mark.parametrize("key", ["", '""', "x" * 256, "a\tb"])
def test_malformed_key_is_400(
    client: TestClient, alpha: CallerKey, clean_db: str, key: str
) -> None:
    """An empty, too long or control-character key is refused naming the header."""
    response = client.post("/v1/orders", json=order(), headers=_with_key(alpha, key))
    assert response.status_code == 400
    assert response.json()["fields"][0]["field"] == "Idempotency-Key"
    assert row_counts(clean_db)["orders"] == 0


def test_external_id_replay_and_conflict(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """Without a key, a repeated external_id replays (same payload) or is 422 naming it."""
    first = client.post("/v1/orders", json=order("e-1"), headers=alpha.headers)
    again = client.post("/v1/orders", json=order("e-1"), headers=alpha.headers)
    other = client.post("/v1/orders", json=order("e-1", checkoutId="b2"), headers=alpha.headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 422
    assert other.json()["fields"][0]["field"] == "external_id"
    assert row_counts(clean_db)["orders"] == 1


def test_batch_key_replays_the_whole_batch(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """A batch sent twice with one key answers the same batch id and the same per-item results."""
    body = {"orders": [order("a"), order(None), order(None), {"order_type": "?"}, order("a")]}
    first = client.post("/v1/orders/batch", json=body, headers=_with_key(alpha, "b-1"))
    second = client.post("/v1/orders/batch", json=body, headers=_with_key(alpha, "b-1"))
    assert first.status_code == 202 and second.status_code == 200
    assert second.json() == first.json()
    assert row_counts(clean_db)["orders"] == 3
    changed = {"orders": body["orders"][:2]}
    reused = client.post("/v1/orders/batch", json=changed, headers=_with_key(alpha, "b-1"))
    assert reused.status_code == 422


def test_batch_key_in_flight_is_409(client: TestClient, alpha: CallerKey, clean_db: str) -> None:
    """A batch key still in flight answers 409 whatever the payload hash."""
    body = {"orders": [order("a")]}
    first = client.post("/v1/orders/batch", json=body, headers=_with_key(alpha, "b-2"))
    with transaction(clean_db) as session:
        row = session.get(IdempotencyKey, (alpha.id, "b-2"))
        assert row is not None and row.resource_id == first.json()["batch_id"]
        row.resource_id = None
    assert (
        client.post("/v1/orders/batch", json=body, headers=_with_key(alpha, "b-2")).status_code
        == 409
    )


def test_concurrent_requests_with_one_key_create_one_order(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """Eight simultaneous requests with one key create one order; the others replay or get 409."""
    payload = order(None)
    statuses: list[int] = []
    ids: set[str] = set()
    barrier = threading.Barrier(8)

    def send() -> None:
        barrier.wait()
        response = client.post("/v1/orders", json=payload, headers=_with_key(alpha, "k-c"))
        statuses.append(response.status_code)
        if response.status_code in (200, 202):
            ids.add(response.json()["id"])

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(202) == 1
    assert set(statuses) <= {200, 202, 409}
    assert len(ids) == 1
    with transaction(clean_db) as session:
        keys = list(session.scalars(select(IdempotencyKey)))
    assert row_counts(clean_db)["orders"] == 1 and len(keys) == 1


def test_batch_key_with_an_unserialisable_item_replays(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """A keyed batch holding an item nested too deeply to hash still replays exactly."""
    nested = b'{"a": ' * 300 + b"1" + b"}" * 300
    deep = orjson.dumps(order("deep"))[:-1] + b', "customFields": ' + nested + b"}"
    body = b'{"orders": [' + orjson.dumps(order("ok")) + b", " + deep + b"]}"
    headers = {**_with_key(alpha, "b-deep"), "content-type": "application/json"}
    first = client.post("/v1/orders/batch", content=body, headers=headers)
    second = client.post("/v1/orders/batch", content=body, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert second.json() == first.json()
    assert "nested too deeply" in first.json()["results"][1]["error"]["message"]
    assert row_counts(clean_db)["orders"] == 1
