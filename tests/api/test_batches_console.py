"""The console's Batches pages: batch objects, and approve / resume / cancel as operator
actions, each a history row naming the operator."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.api.conftest import CallerKey, make_caller, order
from worker.batches import store as batch_store
from worker.db import transaction
from worker.models import Batch, Order


@pytest.fixture
def ops(clean_db: str) -> CallerKey:
    return make_caller(clean_db, "olga", role="operator")


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def _priced(client: TestClient, alpha: CallerKey, clean_db: str) -> str:
    """A preview-first batch whose two orders are previewed and held for approval."""
    body = {"orders": [order("K-1"), order("K-2")], "mode": "preview_first"}
    batch_id = client.post("/v1/orders/batch", json=body, headers=alpha.headers).json()["batch_id"]
    with transaction(clean_db) as session:
        session.execute(
            update(Order)
            .where(Order.batch_id == batch_id)
            .values(status="previewed", due_at=None, reason="awaiting_approval")
        )
    return batch_id


def test_operator_approves_from_the_console_and_is_named(
    client: TestClient, alpha: CallerKey, ops: CallerKey, clean_db: str
) -> None:
    batch_id = _priced(client, alpha, clean_db)
    client.post("/console/login", data={"key": ops.key}, follow_redirects=False)
    listing = client.get("/console/batches")
    assert listing.status_code == 200 and batch_id in listing.text
    assert "awaiting_approval" in listing.text
    page = client.get(f"/console/batches/{batch_id}")
    assert "Approve" in page.text and "Resume" not in page.text
    done = client.post(
        f"/console/batches/{batch_id}/approve",
        data={"csrf": _csrf(page.text)},
        follow_redirects=False,
    )
    assert done.status_code == 303 and "error" not in done.headers["location"]
    with transaction(clean_db) as session:
        history = [(e.to_state, e.actor) for e in batch_store.history(session, batch_id)]
        released = session.query(Order).filter(Order.batch_id == batch_id).all()
    assert history == [("awaiting_approval", "intake"), ("running", "operator:olga")]
    assert all(o.due_at is not None and o.reason is None for o in released)
    page = client.get(f"/console/batches/{batch_id}")
    assert "operator:olga" in page.text and '/approve"' not in page.text  # no Approve form


def test_halted_batch_shows_in_needs_attention_and_resumes(
    client: TestClient, alpha: CallerKey, ops: CallerKey, clean_db: str
) -> None:
    body = {"orders": [order("H-1")]}
    batch_id = client.post("/v1/orders/batch", json=body, headers=alpha.headers).json()["batch_id"]
    halt = {
        "reason": "upstream_400",
        "status": "rejected",
        "failed": 9,
        "final": 10,
        "failed_share": 0.9,
        "at": "2026-12-04T12:00:00Z",
        "sample": [],
    }
    with transaction(clean_db) as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(state="halted", halt=halt))
    client.post("/console/login", data={"key": ops.key}, follow_redirects=False)
    attention = client.get("/console/attention")
    assert batch_id in attention.text and "upstream_400" in attention.text
    page = client.get(f"/console/batches/{batch_id}")
    client.post(f"/console/batches/{batch_id}/resume", data={"csrf": _csrf(page.text)})
    page = client.get(f"/console/batches/{batch_id}")
    assert 'id="batch-state">running' in page.text
    refused = client.post(
        f"/console/batches/{batch_id}/resume",
        data={"csrf": _csrf(page.text)},
        follow_redirects=False,
    )
    assert refused.status_code == 303
    assert "error" in _flash(refused)  # the refusal is told on the next page, not in the URL
    client.post(f"/console/batches/{batch_id}/cancel", data={"csrf": _csrf(page.text)})
    with transaction(clean_db) as session:
        history = [(e.to_state, e.actor) for e in batch_store.history(session, batch_id)]
        [cancelled] = session.query(Order).filter(Order.batch_id == batch_id).all()
    assert history[-2:] == [("running", "operator:olga"), ("cancelled", "operator:olga")]
    assert cancelled.status == "cancelled"


def _flash(response) -> dict[str, str]:
    import base64
    import json

    from worker.console.web import FLASH_COOKIE

    raw = response.cookies.get(FLASH_COOKIE) or ""
    return json.loads(base64.urlsafe_b64decode(raw.strip('"').encode())) if raw else {}
