"""Batches over HTTP: the batch object, the list, the results file, actions, isolation, bad
input (each refused with a 4xx that changes nothing)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from tests.api.conftest import CallerKey, order, row_counts
from worker.batches import store as batch_store
from worker.db import transaction
from worker.models import Order

UNKNOWN = "bat_" + "0" * 32
_SEQ = 0


def _post(client: TestClient, who: CallerKey, n: int, **options: object) -> dict:
    """A batch of ``n`` new orders (external ids never used before)."""
    global _SEQ
    _SEQ += n
    body = {"orders": [order(f"e-{_SEQ}-{i}") for i in range(n)], **options}
    response = client.post("/v1/orders/batch", json=body, headers=who.headers)
    assert response.status_code == 202, response.text
    return response.json()


def _lines(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines()]


def test_batch_object_counts_match_its_orders(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """A new batch reads as running with every valid order counted, and the counts equal a
    count of the orders table."""
    body = {"orders": [order("a"), {"order_type": "teleport"}, order("b"), order("c")]}
    batch_id = client.post("/v1/orders/batch", json=body, headers=alpha.headers).json()["batch_id"]
    got = client.get(f"/v1/batches/{batch_id}", headers=alpha.headers)
    assert got.status_code == 200
    batch = got.json()
    assert batch["id"] == batch_id
    assert batch["state"] == "running" and batch["mode"] == "run"
    assert batch["counts"] == {"total": 3, "received": 3}
    assert batch["first_final_at"] is None and batch["eta_s"] is None
    with transaction(clean_db) as session:
        assert batch_store.count_orders(session, batch_id) == batch["counts"]


def test_counts_follow_a_cancel_in_the_same_transaction(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    """Cancelling one order moves one count from received to cancelled."""
    answer = _post(client, alpha, 3)
    first = answer["results"][0]["order"]["id"]
    assert client.post(f"/v1/orders/{first}/cancel", headers=alpha.headers).status_code == 200
    batch = client.get(f"/v1/batches/{answer['batch_id']}", headers=alpha.headers).json()
    assert batch["counts"] == {"total": 3, "received": 2, "cancelled": 1}
    assert batch["first_final_at"] is not None
    assert batch["final"] == 1


def test_list_is_the_callers_own_newest_first_with_a_cursor(
    client: TestClient, alpha: CallerKey, beta: CallerKey
) -> None:
    ids = [_post(client, alpha, 1 + i)["batch_id"] for i in range(3)]
    _post(client, beta, 1)
    first = client.get("/v1/batches?limit=2", headers=alpha.headers).json()
    assert [b["id"] for b in first["items"]] == ids[::-1][:2]
    second = client.get(
        f"/v1/batches?limit=2&cursor={first['next_cursor']}", headers=alpha.headers
    ).json()
    assert [b["id"] for b in second["items"]] == ids[:1]
    assert second["next_cursor"] is None


def test_another_callers_batch_is_not_found_on_every_route(
    client: TestClient, alpha: CallerKey, beta: CallerKey, clean_db: str
) -> None:
    """Every batch route answers 404 for another caller's batch and changes nothing."""
    batch_id = _post(client, alpha, 2, mode="preview_first")["batch_id"]
    before = row_counts(clean_db)
    for method, path in [
        ("GET", ""),
        ("GET", "/results"),
        ("POST", "/approve"),
        ("POST", "/cancel"),
        ("POST", "/resume"),
    ]:
        response = client.request(method, f"/v1/batches/{batch_id}{path}", headers=beta.headers)
        assert response.status_code == 404, (path, response.text)
        assert batch_id in response.json()["message"]
    assert client.get("/v1/batches", headers=beta.headers).json()["items"] == []
    assert row_counts(clean_db) == before
    assert client.get(f"/v1/batches/{batch_id}").status_code == 401


def test_unknown_batch_and_bad_cursor_are_clear_4xx(client: TestClient, alpha: CallerKey) -> None:
    assert client.get(f"/v1/batches/{UNKNOWN}", headers=alpha.headers).status_code == 404
    assert client.post(f"/v1/batches/{UNKNOWN}/cancel", headers=alpha.headers).status_code == 404
    bad = client.get("/v1/batches?cursor=%%%", headers=alpha.headers)
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "cursor"
    _post(client, alpha, 1)
    batch_id = client.get("/v1/batches", headers=alpha.headers).json()["items"][0]["id"]
    bad = client.get(f"/v1/batches/{batch_id}/results?after=x", headers=alpha.headers)
    assert bad.status_code == 422 and "after" in bad.json()["fields"][0]["field"]


def test_bad_batch_options_are_refused_naming_the_field(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    before = row_counts(clean_db)
    for options, field in [
        ({"mode": "later"}, "mode"),
        ({"halt_on": {"failed_share": 2, "after": 5}}, "halt_on.failed_share"),
        ({"halt_on": {"failed_share": 0.5}}, "halt_on.after"),
        ({"halt_on": {"failed_share": 0.5, "after": 5, "x": 1}}, "halt_on.x"),
    ]:
        body = {"orders": [order("z")], **options}
        response = client.post("/v1/orders/batch", json=body, headers=alpha.headers)
        assert response.status_code == 422, options
        assert response.json()["fields"][0]["field"] == field
    assert row_counts(clean_db) == before


def test_results_file_is_in_request_order_and_resumes(client: TestClient, alpha: CallerKey) -> None:
    """One line per order with its request index (refused items leave a gap); ``after``
    resumes after the last index received; ``final_only`` keeps the finished ones."""
    body = {"orders": [order("a"), {"order_type": "teleport"}, order("b"), order("c")]}
    answer = client.post("/v1/orders/batch", json=body, headers=alpha.headers).json()
    batch_id = answer["batch_id"]
    response = client.get(f"/v1/batches/{batch_id}/results", headers=alpha.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = _lines(response)
    assert [line["index"] for line in lines] == [0, 2, 3]
    assert [line["external_id"] for line in lines] == ["a", "b", "c"]
    assert [line["order_id"] for line in lines] == [
        r["order"]["id"] for r in answer["results"] if "order" in r
    ]
    assert {line["status"] for line in lines} == {"received"} and lines[0]["upstream"] is None
    rest = _lines(client.get(f"/v1/batches/{batch_id}/results?after=2", headers=alpha.headers))
    assert [line["index"] for line in rest] == [3]
    client.post(f"/v1/orders/{lines[1]['order_id']}/cancel", headers=alpha.headers)
    final = _lines(
        client.get(f"/v1/batches/{batch_id}/results?final_only=true", headers=alpha.headers)
    )
    assert [(line["index"], line["status"]) for line in final] == [(2, "cancelled")]


def test_cancel_cancels_what_was_not_submitted_and_answers_counts(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    batch_id = _post(client, alpha, 4)["batch_id"]
    with transaction(clean_db) as session:
        # One order already went out: a cancel must leave it alone.
        gone = session.query(Order).filter(Order.batch_id == batch_id).order_by(Order.id).first()
        assert gone is not None
        gone.status = "submitted"
    response = client.post(f"/v1/batches/{batch_id}/cancel", headers=alpha.headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["cancelled"] == 3
    assert answer["batch"]["state"] == "cancelled"
    assert answer["batch"]["counts"] == {"total": 4, "cancelled": 3, "submitted": 1}
    again = client.post(f"/v1/batches/{batch_id}/cancel", headers=alpha.headers)
    assert again.status_code == 409


def test_approving_a_running_batch_is_409_and_changes_nothing(
    client: TestClient, alpha: CallerKey, clean_db: str
) -> None:
    plain = _post(client, alpha, 2)["batch_id"]
    priced = _post(client, alpha, 2, mode="preview_first")["batch_id"]
    before = row_counts(clean_db)
    for batch_id in (plain, priced):  # the priced one is still previewing: "running"
        response = client.post(f"/v1/batches/{batch_id}/approve", headers=alpha.headers)
        assert response.status_code == 409, response.text
        assert "running" in response.json()["message"]
        assert (
            client.post(f"/v1/batches/{batch_id}/resume", headers=alpha.headers).status_code == 409
        )
    assert row_counts(clean_db) == before
    assert client.get(f"/v1/batches/{priced}", headers=alpha.headers).json()["mode"] == (
        "preview_first"
    )
