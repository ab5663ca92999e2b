"""The pipeline under a slow or failing upstream: leases kept, late answers kept, outages free."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.helpers import add_orders, new_payload, wait_for
from tests.pipeline.conftest import drive
from worker.db import transaction
from worker.ids import utcnow
from worker.models import Order, OrderEvent
from worker.pipeline import sweeper


def _events(db_url: str, ids: list[str]) -> list[OrderEvent]:
    with transaction(db_url) as session:
        rows = session.scalars(select(OrderEvent).where(OrderEvent.order_id.in_(ids)))
        return list(rows)


def _status(db_url: str, order_id: str) -> str:
    with transaction(db_url) as session:
        return session.get(Order, order_id).status  # type: ignore[union-attr]


def test_calls_longer_than_the_lease_keep_their_orders(runtime_factory, caller_id, stub, clean_db):
    """Calls of 1.2 s under a 0.6 s lease, a sweeper running: nothing is recovered."""
    rt = runtime_factory(lease_s=0.6)
    stub.configure(latency_ms=1200)
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(6)])
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(0.1):
            with transaction(clean_db) as session:
                sweeper.recover_expired_leases(session, now=utcnow(), limit=100)

    sweeping = threading.Thread(target=sweep)
    sweeping.start()
    try:
        rt.pipeline.run(ids)
    finally:
        stop.set()
        sweeping.join()
    assert {_status(clean_db, i) for i in ids} == {"complete"}
    reasons = {e.reason for e in _events(clean_db, ids)}
    assert not reasons & {"lease_expired", "worker_lost_during_submit"}


def test_a_submit_answer_after_recovery_is_recorded(runtime_factory, caller_id, stub, clean_db):
    """The sweeper moved the order to submit_unknown mid-call; the real answer still counts."""
    rt = runtime_factory(lease_s=30)
    [oid] = add_orders(clean_db, caller_id, [new_payload(2)])
    stub.configure(latency_ms=1500)
    worker = threading.Thread(target=rt.pipeline.run, args=([oid],))
    worker.start()
    deadline = time.monotonic() + 10
    while _status(clean_db, oid) != "submitting" and time.monotonic() < deadline:
        time.sleep(0.02)
    # As the sweeper would once the lease is over (its clock moved past the lease).
    with transaction(clean_db) as session:
        later = utcnow() + timedelta(seconds=60)
        assert sweeper.recover_expired_leases(session, now=later, limit=10) == 1
    assert _status(clean_db, oid) == "submit_unknown"
    worker.join(20)
    assert _status(clean_db, oid) == "complete"
    last = max(_events(clean_db, [oid]), key=lambda e: e.id)
    assert (last.from_status, last.to_status, last.reason) == (
        "submit_unknown",
        "complete",
        "late_submit_answer",
    )


def test_an_outage_spends_no_retry_budget(runtime_factory, caller_id, stub, clean_db):
    """Every call 502s for 3 s: orders wait as upstream_unavailable, then all complete."""
    rt = runtime_factory(retry_max_attempts=3, retry_base_s=0.05, retry_cap_s=0.1)
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(40)])
    stub.set_outage(True)
    end = time.monotonic() + 3
    seen_unavailable = False
    while time.monotonic() < end:
        rt.pipeline.run(ids)
        with transaction(clean_db) as session:
            orders = list(session.scalars(select(Order).where(Order.id.in_(ids))))
        assert not [o for o in orders if o.status == "failed"]
        seen_unavailable |= any(o.reason == "upstream_unavailable" for o in orders)
        time.sleep(0.1)
    during = sum(stub.stats()["outage_requests"].values())
    stub.set_outage(False)
    orders = drive(rt, ids, timeout_s=30)
    assert {o.status for o in orders.values()} == {"complete"}
    assert seen_unavailable
    # The first burst fails before the breaker opens; after that, about one probe a second.
    assert during <= 40 + 8, during


@pytest.mark.long
def test_orders_the_upstream_always_refuses_end_failed_after_an_outage(
    runtime_factory, caller_id, stub, clean_db
):
    """Payloads whose preview always answers 502 (an unknown subscription) are all that is
    left when an outage ends. Their previews can never be the probe that proves the upstream
    is back; a read of an order the upstream created (2xx) is: the breaker half-opens and they
    end failed, upstream_502, spending their own budget, not waiting forever for free."""
    rt = runtime_factory(retry_max_attempts=10, retry_base_s=0.05, retry_cap_s=0.1)
    good = add_orders(clean_db, caller_id, [new_payload(100)])
    assert {o.status for o in drive(rt, good, timeout_s=20).values()} == {"complete"}
    unknown = {"forSubscription": {"id": "sub-" + "f" * 32}}
    ids = add_orders(clean_db, caller_id, [new_payload(i, **unknown) for i in range(8)])
    stub.set_outage(True)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        rt.pipeline.run(ids)
        time.sleep(0.1)
    with transaction(clean_db) as session:
        reasons = set(session.scalars(select(Order.reason).where(Order.id.in_(ids))))
    assert reasons == {"upstream_unavailable"}  # the breaker opened: they wait for free
    stub.set_outage(False)
    orders = drive(rt, ids, timeout_s=150)
    assert {(o.status, o.reason) for o in orders.values()} == {("failed", "upstream_502")}


def test_the_breaker_stays_open_until_a_probe_answers_2xx(
    runtime_factory, caller_id, stub, clean_db
):
    """Through 5 s of outage the breaker stays open (its probes answer 502) and the orders
    wait having spent at most the one attempt that met the outage; then they complete."""
    rt = runtime_factory(retry_max_attempts=3, retry_base_s=0.05, retry_cap_s=0.1)
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(6)])
    stub.set_outage(True)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        rt.pipeline.run(ids)
        time.sleep(0.1)
    assert rt.gate.admission().kind == "probe"
    with transaction(clean_db) as session:
        rows = list(session.execute(select(Order.status, Order.attempts).where(Order.id.in_(ids))))
    assert all(status == "received" and attempts <= 2 for status, attempts in rows), rows
    stub.set_outage(False)
    orders = drive(rt, ids, timeout_s=20)
    assert {o.status for o in orders.values()} == {"complete"}


def test_a_probe_that_answers_makes_the_waiting_orders_due_at_once(
    runtime_factory, caller_id, stub, clean_db
):
    """Orders the open breaker turned away wait a second or two; the probe that finds the
    upstream answering again makes them due at once (the dispatcher sends them next)."""
    rt = runtime_factory(retry_max_attempts=3, retry_base_s=0.05, retry_cap_s=0.1)
    waiting = add_orders(clean_db, caller_id, [new_payload(i) for i in range(5)])
    stub.set_outage(True)
    seq = iter(range(100, 400))

    def opened() -> bool:
        rt.pipeline.run(add_orders(clean_db, caller_id, [new_payload(next(seq))]))
        return rt.gate.admission().kind == "probe"

    wait_for(opened, timeout_s=15)
    stub.set_outage(False)

    def undeferred() -> bool:
        # Turned away just now, due 1.9 s ahead: only the probe's answer makes them due.
        with transaction(clean_db) as session:
            session.execute(
                update(Order)
                .where(Order.id.in_(waiting))
                .values(
                    reason="upstream_unavailable",
                    due_at=utcnow() + timedelta(seconds=1.9),
                    next_attempt_at=utcnow() + timedelta(seconds=1.9),
                )
            )
        # A new order meets the open breaker: held back, and the fleet's probe when its
        # slot is free (one a second).
        rt.pipeline.run(add_orders(clean_db, caller_id, [new_payload(next(seq))]))
        with transaction(clean_db) as session:
            due = session.scalars(select(Order.due_at).where(Order.id.in_(waiting))).all()
        return all(d is not None and d <= utcnow().replace(tzinfo=d.tzinfo) for d in due)

    wait_for(undeferred, timeout_s=10, every_s=0.2)
