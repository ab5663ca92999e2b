"""Pipeline paths that had no test: the countdown cap, follow-ups that end badly, a second
401, and an order-list lookup that keeps failing. Real database and Redis, the stub upstream."""

from __future__ import annotations

import pytest

from tests.helpers import add_orders, new_payload
from tests.pipeline.conftest import drive
from worker.db import transaction
from worker.repository import history, load


def _steps(db_url: str, oid: str) -> list[tuple[str, str | None]]:
    with transaction(db_url) as session:
        return [(e.to_status, e.reason) for e in history(session, oid)]


def _load(db_url: str, oid: str):  # type: ignore[no-untyped-def]
    with transaction(db_url) as session:
        [order] = load(session, [oid])
    return order


def test_retry_after_above_the_countdown_cap_waits_in_the_database(
    runtime_factory, caller_id, stub, clean_db
):
    """Invariant 4: a ``Retry-After`` longer than the countdown cap is a ``due_at``, not a
    broker countdown: the run asks for no requeue and the sweeper will find the order."""
    rt = runtime_factory(retry_countdown_max_s=1.0)
    stub.configure(retry_after_s=5)
    stub.script("preview", [{"status": 503, "times": 1}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    result = rt.pipeline.run([oid])
    assert result.requeue == []
    order = _load(clean_db, oid)
    assert (order.status, order.reason, order.lease_owner) == ("received", "upstream_503", None)
    wait_s = (order.next_attempt_at - order.updated_at).total_seconds()
    assert wait_s >= 4.99
    assert order.due_at == order.next_attempt_at  # no enqueue grace: nothing was enqueued


def test_retry_after_under_the_countdown_cap_is_a_countdown(
    runtime_factory, caller_id, stub, clean_db
):
    """The other side of the cap: a short wait is handed back as a countdown requeue."""
    rt = runtime_factory(retry_countdown_max_s=30.0)
    stub.configure(retry_after_s=5)
    stub.script("preview", [{"status": 503, "times": 1}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    result = rt.pipeline.run([oid])
    [(requeued, delay)] = result.requeue
    assert requeued == oid and delay >= 5
    order = _load(clean_db, oid)
    # Due for the dispatcher then: the tick wakes a pass, the sweep covers a lost tick.
    assert order.due_at == order.next_attempt_at


def test_follow_timeout_fails_an_order_that_never_settles(
    runtime_factory, caller_id, stub, clean_db
):
    """A ``submitted`` order the upstream never reports complete ends ``failed``."""
    rt = runtime_factory(follow_max_age_s=0.5)
    stub.configure(complete_after_s=600)
    [oid] = add_orders(clean_db, caller_id, [new_payload(1, process_immediately=False)])
    order = drive(rt, [oid])[oid]
    assert (order.status, order.reason) == ("failed", "follow_timeout")
    steps = _steps(clean_db, oid)
    assert ("submitted", None) in steps and steps[-1] == ("failed", "follow_timeout")
    assert order.due_at is None and order.lease_owner is None
    assert stub.orders()["count"] == 1


def test_upstream_reported_failure_after_submitted(runtime_factory, caller_id, stub, clean_db):
    """The follow-up reads ``failed`` upstream: the order is ``failed``/``upstream_failed``."""
    rt = runtime_factory()
    stub.configure(async_fail_rate=1.0, complete_after_s=0.2)
    [oid] = add_orders(clean_db, caller_id, [new_payload(1, process_immediately=False)])
    order = drive(rt, [oid])[oid]
    assert (order.status, order.reason) == ("failed", "upstream_failed")
    assert order.upstream_status == "failed" and order.upstream_id
    assert [s for s, _ in _steps(clean_db, oid)][-2:] == ["submitted", "failed"]
    assert stub.orders()["count"] == 1


@pytest.mark.parametrize("wire", ["stdlib", "httpx"])
def test_second_401_fails_with_upstream_auth(runtime_factory, caller_id, stub, clean_db, wire):
    """A 401 refreshes the token and retries once; a second 401 is ``failed``/``upstream_auth``
    (not retried with backoff, not rejected). Both wires (``ORDERS_UPSTREAM_HTTP``)."""
    rt = runtime_factory(upstream_http=wire)
    stub.script("preview", [{"status": 401, "times": 2}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    rt.pipeline.run([oid])
    order = _load(clean_db, oid)
    assert (order.status, order.reason) == ("failed", "upstream_auth")
    assert order.failures == 0 and order.due_at is None
    assert rt.tokens.fetches == 2  # the first 401 made us fetch a fresh token
    assert stub.orders()["count"] == 0


def test_failing_reconcile_lookup_is_retried_then_held(runtime_factory, caller_id, stub, clean_db):
    """The order list answering 502 keeps an ambiguous order ``submit_unknown``: each failed
    lookup is a recorded reschedule; when the budget is spent it is held, never re-sent."""
    rt = runtime_factory(upstream_read_timeout_s=0.5, retry_max_attempts=3)
    stub.configure(ambiguous_hold_s=3)
    stub.script("submit", [{"kind": "ambiguous", "times": 1}])
    stub.script("list", [{"status": 502, "times": 50}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    order = drive(rt, [oid])[oid]
    assert (order.status, order.reason, order.due_at) == (
        "submit_unknown",
        "held_for_operator",
        None,
    )
    assert "lookup kept failing" in (order.message or "")
    steps = _steps(clean_db, oid)
    assert ("submit_unknown", "lookup_upstream_502") in steps
    record = stub.orders()
    assert record["count"] == 1 and not record["duplicates"]
