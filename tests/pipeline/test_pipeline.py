"""The pipeline in-process: preview, submit, follow, retries, rejections, against the stub."""

from __future__ import annotations

from sqlalchemy import select

from tests.helpers import add_orders, new_payload
from tests.pipeline.conftest import drive
from worker.db import transaction
from worker.models import OrderEvent
from worker.repository import history


def _path(db_url: str, order_id: str) -> list[tuple[str | None, str]]:
    with transaction(db_url) as session:
        return [(e.from_status, e.to_status) for e in history(session, order_id)]


HAPPY = [
    (None, "received"),
    ("received", "previewing"),
    ("previewing", "previewed"),
    ("previewed", "submitting"),
    ("submitting", "complete"),
]


def test_orders_reach_complete_with_full_history(runtime_factory, caller_id, stub, clean_db):
    """Orders go received -> ... -> complete, once each upstream, with every step recorded."""
    rt = runtime_factory()
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(20)])
    orders = drive(rt, ids)
    assert {o.status for o in orders.values()} == {"complete"}
    for order in orders.values():
        assert order.upstream_id and order.upstream_id.startswith("order-")
        assert order.preview is not None
        assert order.lease_owner is None and order.due_at is None
        assert _path(clean_db, order.id) == HAPPY
    record = stub.orders()
    assert record["count"] == 20 and not record["duplicates"]


def test_submitted_orders_are_followed_until_complete(runtime_factory, caller_id, stub, clean_db):
    """An upstream ``submitted`` answer is followed through the objects endpoint to complete."""
    rt = runtime_factory()
    ids = add_orders(
        clean_db, caller_id, [new_payload(i, process_immediately=False) for i in range(5)]
    )
    orders = drive(rt, ids)
    assert {o.status for o in orders.values()} == {"complete"}
    path = _path(clean_db, ids[0])
    assert ("submitting", "submitted") in path and path[-1] == ("submitted", "complete")


def test_transient_502_is_retried_then_completes(runtime_factory, caller_id, stub, clean_db):
    """Two scripted 502s on submit are retried with backoff; the order completes once."""
    rt = runtime_factory()
    stub.script("submit", [{"status": 502, "times": 2}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    order = drive(rt, [oid])[oid]
    assert order.status == "complete" and order.failures == 2
    retries = [(f, t) for f, t in _path(clean_db, oid) if (f, t) == ("submitting", "previewed")]
    assert len(retries) == 2
    with transaction(clean_db) as session:
        reasons = session.scalars(
            select(OrderEvent.reason).where(
                OrderEvent.order_id == oid,
                OrderEvent.to_status == "previewed",
                OrderEvent.from_status == "submitting",
            )
        ).all()
    assert reasons == ["upstream_502", "upstream_502"]
    assert stub.orders()["count"] == 1


def test_persistent_502_fails_with_reason_then_operator_retry_completes(
    runtime_factory, caller_id, stub, clean_db
):
    """A 502 that keeps coming back ends ``failed``/``upstream_502``; a retry then completes."""
    from worker.actions.actor import operator
    from worker.actions.retry_one import retry_order

    rt = runtime_factory(retry_max_attempts=3)
    stub.script("preview", [{"status": 502, "times": 3}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    order = drive(rt, [oid])[oid]
    assert (order.status, order.reason, order.failures) == ("failed", "upstream_502", 3)
    assert retry_order(clean_db, operator("olga"), oid) == 1
    order = drive(rt, [oid])[oid]
    assert order.status == "complete"
    assert ("failed", "received") in _path(clean_db, oid)


def test_permanent_error_rejects_with_upstream_message(runtime_factory, caller_id, stub, clean_db):
    """A submit 404 (unknown subscription) is permanent: ``rejected``, upstream message kept."""
    rt = runtime_factory()
    payload = {
        "order_type": "cancel_subscription",
        "external_id": "C-1",
        "subscriptionId": "sub-00000000000000000000000000000001",
    }
    # Upstream preview answers an unknown subscription with a 502 (it documents no 404), so
    # the subscription exists for the preview and the submit is scripted to find it gone.
    stub.script("submit", [{"status": 404}])
    [oid] = add_orders(clean_db, caller_id, [payload])
    order = drive(rt, [oid])[oid]
    assert (order.status, order.reason) == ("rejected", "upstream_404")
    assert order.message == "Not found."
    assert stub.orders()["count"] == 0


def test_retry_after_is_a_floor(runtime_factory, caller_id, stub, clean_db):
    """A 503 with ``Retry-After: 1`` schedules the next attempt at least 1 s later."""
    rt = runtime_factory()
    stub.configure(retry_after_s=1)
    stub.script("preview", [{"status": 503, "times": 1}])
    [oid] = add_orders(clean_db, caller_id, [new_payload(1)])
    rt.pipeline.run([oid])
    with transaction(clean_db) as session:
        from worker.repository import load

        [order] = load(session, [oid])
    assert order.status == "received" and order.reason == "upstream_503"
    assert order.next_attempt_at is not None
    assert (order.next_attempt_at - order.updated_at).total_seconds() >= 0.99
    rt.pipeline.run([oid])  # not due yet: nothing happens
    with transaction(clean_db) as session:
        [again] = load(session, [oid])
    assert again.status == "received"
