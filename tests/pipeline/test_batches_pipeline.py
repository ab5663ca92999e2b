"""Batches through the real pipeline (stub upstream, real database and Redis): counts that
match the orders under concurrent workers and a Redis flush, a priced batch submitted once
on approval, and a batch that halts itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.helpers import new_payload
from worker.batches import actions, watch
from worker.batches import store as batch_store
from worker.db import get_engine, transaction
from worker.ids import utcnow
from worker.intake.service import accept_batch
from worker.models import Order, WebhookDelivery, WebhookEndpoint
from worker.queue.runtime import Runtime
from worker.states import TERMINAL

BAD_SUBSCRIPTION = {
    "order_type": "cancel_subscription",
    "subscriptionId": "sub-ffffffffffffffffffffffffffffffff",
}


def _batch(rt: Runtime, caller_id: str, payloads: list[dict[str, Any]], **options: Any) -> str:
    body = {"orders": payloads, **options}
    return str(accept_batch(rt.settings, caller_id, body).body["batch_id"])


def _orders(db_url: str, batch_id: str) -> dict[str, Order]:
    with transaction(db_url) as session:
        rows = session.scalars(select(Order).where(Order.batch_id == batch_id))
        return {o.id: o for o in rows}


def _view(db_url: str, batch_id: str) -> dict[str, Any]:
    return actions.priced(db_url, None, batch_id)


def _until(rt: Runtime, batch_id: str, done: Callable[[dict[str, Any]], bool], *, timeout_s=30):
    """Run the batch's due orders through the pipeline until ``done(view)`` or the deadline."""
    db_url = rt.settings.database_url
    deadline = time.monotonic() + timeout_s
    while True:
        view = _view(db_url, batch_id)
        if done(view):
            return view
        assert time.monotonic() < deadline, view
        due = [
            o.id
            for o in _orders(db_url, batch_id).values()
            if o.status not in TERMINAL and o.due_at is not None
        ]
        for start in range(0, len(due), 10):
            rt.pipeline.run(due[start : start + 10])
        time.sleep(0.02)


def _check_counts(db_url: str, batch_id: str) -> dict[str, int]:
    """The batch's counts and a count of its orders, read in one snapshot."""
    engine = get_engine(db_url)
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    with engine.connect().execution_options(**options) as conn, Session(bind=conn) as session:
        counted = batch_store.count_orders(session, batch_id)
        counts = batch_store.summaries(session, [batch_id], now=utcnow())[batch_id].counts
    assert counts == counted
    return counted


def test_counts_match_the_orders_under_concurrent_workers_and_a_redis_flush(
    runtime_factory, caller_id, stub, clean_db, redis_url
):
    """Two workers race over the same orders (failures, retries, async failures mixed in)
    while Redis is flushed; the counts equal a count of the orders, mid-way and at the end."""
    stub.configure(fail_rates={502: 0.2}, async_fail_rate=0.3)
    rt1, rt2 = runtime_factory(retry_max_attempts=2), runtime_factory(retry_max_attempts=2)
    payloads = [new_payload(i) for i in range(120)] + [dict(BAD_SUBSCRIPTION, external_id="x")]
    batch_id = _batch(rt1, caller_id, payloads)
    ids = list(_orders(clean_db, batch_id))
    errors: list[BaseException] = []

    def work(rt: Runtime, order: list[str]) -> None:
        try:
            for start in range(0, len(order), 15):
                rt.pipeline.run(order[start : start + 15])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    for round_ in range(40):
        threads = [
            threading.Thread(target=work, args=(rt1, ids)),
            threading.Thread(target=work, args=(rt2, ids[::-1])),
        ]
        for t in threads:
            t.start()
        if round_ == 1:
            redis.Redis.from_url(redis_url).flushdb()
            _check_counts(clean_db, batch_id)
        for t in threads:
            t.join()
        assert not errors
        counts = _check_counts(clean_db, batch_id)
        if sum(counts.get(s, 0) for s in TERMINAL) == counts["total"]:
            break
        time.sleep(0.05)
    counts = _check_counts(clean_db, batch_id)
    assert counts["total"] == 121
    assert counts.get("complete", 0) > 0 and counts.get("failed", 0) > 0
    watch.sweep(clean_db)
    view = _view(clean_db, batch_id)
    assert view["state"] == "completed" and view["completed_at"] is not None
    assert view["first_final_at"] <= view["last_final_at"]
    assert view["final_per_s"] > 0


def test_preview_first_prices_then_submits_each_order_once_on_approval(
    runtime_factory, caller_id, stub, clean_db
):
    """Every order is previewed and none submitted; the batch waits with its totals and its
    preview failures; approval submits the previewed orders without previewing again."""
    rt = runtime_factory(retry_max_attempts=1)
    payloads = [new_payload(i) for i in range(6)]
    payloads.insert(2, dict(BAD_SUBSCRIPTION, external_id="bad-1"))
    batch_id = _batch(rt, caller_id, payloads, mode="preview_first")
    view = _until(rt, batch_id, lambda v: v["state"] == "awaiting_approval")
    assert view["counts"] == {"total": 7, "previewed": 6, "failed": 1}
    assert stub.orders()["count"] == 0
    totals = view["totals"]
    assert totals["priced"] == 6 and totals["preview_failures"] == 1
    [failure] = totals["failures"]
    assert failure["index"] == 2 and failure["reason"] == "upstream_502"
    one = _orders(clean_db, batch_id)
    amounts = [Decimal(o.preview["schedule"][0]["amount"]) for o in one.values() if o.preview]
    assert len(amounts) == 6
    assert totals["by_currency"] == {"GBP": str(sum(amounts))}
    parked = [o for o in one.values() if o.status == "previewed"]
    assert [(o.due_at, o.reason) for o in parked] == [(None, "awaiting_approval")] * 6
    previews = stub.stats()["requests"]["preview"]
    # Runs over held orders submit nothing.
    rt.pipeline.run([o.id for o in parked])
    assert stub.orders()["count"] == 0

    result = actions.approve(clean_db, caller_id, batch_id, actor="caller:test")
    assert result.released == 6 and result.batch["state"] == "running"
    view = _until(rt, batch_id, lambda v: v["state"] == "completed")
    assert view["counts"] == {"total": 7, "complete": 6, "failed": 1}
    created = stub.orders()
    assert created["count"] == 6 and not created["duplicates"]
    assert stub.stats()["requests"]["preview"] == previews
    try:
        actions.approve(clean_db, caller_id, batch_id, actor="caller:test")
    except Exception as exc:
        assert type(exc).__name__ == "WrongState"
    else:
        raise AssertionError("a second approval must be refused")


def test_a_batch_failing_one_way_halts_and_stops_what_was_not_submitted(
    runtime_factory, caller_id, stub, clean_db
):
    """Past ``after`` final orders with more than ``failed_share`` rejected for one reason,
    the batch halts: the rest stay unsubmitted, one ``batch.halted`` event goes out (to an
    endpoint subscribed to batch events only); resume lets them go on."""
    from worker.ids import new_id

    with transaction(clean_db) as session:
        session.add(
            WebhookEndpoint(
                id=new_id("we"),
                caller_id=caller_id,
                url="http://127.0.0.1:9/hook",
                secret="whsec_" + "A" * 32,
                event_types=["batch.*"],
                enabled=True,
                created_at=utcnow(),
            )
        )
    stub.script("preview", [{"status": 400, "times": 1000}])
    rt = runtime_factory()
    batch_id = _batch(
        rt,
        caller_id,
        [new_payload(i) for i in range(40)],
        halt_on={"failed_share": 0.5, "after": 5},
    )
    view = _until(rt, batch_id, lambda v: v["state"] == "halted")
    rejected = view["counts"]["rejected"]
    assert 5 <= rejected <= 10  # one chunk of the runs at most
    assert view["halt"]["reason"] == "upstream_400" and view["halt"]["sample"]
    assert stub.stats()["requests"]["preview"] == rejected
    # Nothing else moves, however often the pipeline runs over the batch.
    rest = [o.id for o in _orders(clean_db, batch_id).values() if o.status == "received"]
    assert len(rest) == 40 - rejected
    rt.pipeline.run(rest[:10])
    watch.sweep(clean_db)
    held = _orders(clean_db, batch_id)
    assert all(
        o.due_at is None and o.reason == "batch_halted"
        for o in held.values()
        if o.status == "received"
    )
    assert stub.stats()["requests"]["preview"] == rejected
    _check_counts(clean_db, batch_id)

    stub._call("DELETE", "/_stub/script")
    result = actions.resume(clean_db, caller_id, batch_id, actor="operator:ops")
    assert result.released == 40 - rejected
    view = _until(rt, batch_id, lambda v: v["state"] == "completed")
    assert view["counts"] == {"total": 40, "rejected": rejected, "complete": 40 - rejected}
    watch.sweep(clean_db)
    with transaction(clean_db) as session:
        types = sorted(session.scalars(select(WebhookDelivery.event_type)))
        events = [(e.to_state, e.actor) for e in batch_store.history(session, batch_id)]
    assert types == ["batch.completed", "batch.halted"]
    assert events == [
        ("running", "intake"),
        ("halted", "worker"),
        ("running", "operator:ops"),
        ("completed", "worker"),
    ]
