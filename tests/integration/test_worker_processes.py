"""The pipeline with real ``orders worker``/``orders beat`` processes, real Redis and database.

Each test asserts: no order lost, none created twice upstream, every order settled, and a
complete history for every order that completed.
"""

from __future__ import annotations

import itertools
import time

import pytest
import redis
from sqlalchemy import select

from tests.helpers import new_payload
from worker.db import transaction
from worker.models import Order, OrderEvent

pytestmark = pytest.mark.slow

HAPPY = [
    (None, "received"),
    ("received", "previewing"),
    ("previewing", "previewed"),
    ("previewed", "submitting"),
    ("submitting", "complete"),
]


def _started(cluster, ids: list[str]) -> bool:  # type: ignore[no-untyped-def]
    """Some order of ``ids`` has moved past ``received``: the workers are on the batch."""
    with transaction(cluster.db_url) as session:
        statuses = session.scalars(select(Order.status).where(Order.id.in_(ids)))
        return any(status != "received" for status in statuses)


def _assert_invariants(cluster, ids, orders) -> None:  # type: ignore[no-untyped-def]
    assert set(orders) == set(ids), "an accepted order disappeared"
    record = cluster.stub.orders()
    assert not record["duplicates"], f"created twice upstream: {record['duplicates']}"
    upstream_ids = [o["external_id"] for o in record["orders"]]
    assert len(upstream_ids) == len(set(upstream_ids))
    with transaction(cluster.db_url) as session:
        rows = session.execute(
            select(OrderEvent.order_id, OrderEvent.from_status, OrderEvent.to_status)
            .where(OrderEvent.order_id.in_(ids))
            .order_by(OrderEvent.id)
        ).all()
    paths: dict[str, list[tuple[str | None, str]]] = {}
    for oid, frm, to in rows:
        paths.setdefault(oid, []).append((frm, to))
    for oid, order in orders.items():
        path = paths[oid]
        assert path[0] == (None, "received") and path[-1][1] == order.status
        for (_, to), (frm, _) in itertools.pairwise(path):
            assert to == frm, f"history of {oid} has a gap: {path}"
    completed_ext = {o["external_id"] for o in record["orders"]}
    for order in orders.values():
        if order.status == "complete":
            assert (order.external_id or order.id) in completed_ext


def test_few_hundred_orders_complete(cluster, caller_id):
    """300 orders through two worker processes all complete, each created once upstream."""
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(300)])
    orders = cluster.wait_settled(ids)
    assert {o.status for o in orders.values()} == {"complete"}
    _assert_invariants(cluster, ids, orders)
    assert cluster.stub.orders()["count"] == 300


def test_502_storm(cluster, caller_id):
    """30% of upstream calls answer 502: orders retry and settle; no duplicates."""
    cluster.stub.configure(fail_rates={"502": 0.3})
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(200)])
    orders = cluster.wait_settled(ids)
    _assert_invariants(cluster, ids, orders)
    statuses = {o.status for o in orders.values()}
    assert statuses <= {"complete", "failed"}
    assert sum(o.failures for o in orders.values()) > 0, "the storm did not reach the worker"
    for order in orders.values():
        if order.status == "failed":
            assert order.reason == "upstream_502"


def test_short_token_lifetime(cluster, caller_id):
    """Tokens living 2 s over a run of several seconds: no order fails, few tokens fetched."""
    cluster.stub.configure(token_ttl_s=2, latency_ms=5)
    cluster.worker()
    cluster.beat()
    ids: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < 6:  # three token lifetimes of work
        batch = cluster.submit(caller_id, [new_payload(len(ids) + i) for i in range(20)])
        ids += batch
        # The next batch goes in once this one is under way, not after a guessed pause.
        cluster.wait_for(lambda batch=batch: _started(cluster, batch), timeout_s=30)
    orders = cluster.wait_settled(ids)
    assert {o.status for o in orders.values()} == {"complete"}
    _assert_invariants(cluster, ids, orders)
    elapsed = time.monotonic() - started
    issued = cluster.stub.stats()["tokens_issued"]
    assert issued <= elapsed / 2 * 1.5 + 3, f"{issued} tokens in {elapsed:.1f} s"


@pytest.mark.long
@pytest.mark.parametrize("ceiling", [None, 8], ids=["no-ceiling", "ceiling-8"])
def test_worker_killed_mid_batch(cluster, caller_id, ceiling):
    """SIGKILL of the worker mid-batch, then a restart: nothing lost, nothing created twice.
    With a ceiling of 8 each of the 2 processes holds 4 permits for chunks of 12: its runs hand
    their last calls to the tail thread (``worker/pipeline/tail.py``), and the kill takes
    tails down with their calls out."""
    cluster.env["ORDERS_SUBMIT_UNKNOWN_POLICY"] = "resubmit"
    if ceiling:
        cluster.env["ORDERS_UPSTREAM_MAX_IN_FLIGHT"] = str(ceiling)
    cluster.stub.configure(latency_ms=40)
    worker = cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(300)])
    cluster.wait_for(lambda: cluster.counts().get("complete", 0) >= 40)
    worker.kill()
    in_flight = sum(cluster.counts().get(s, 0) for s in ("previewing", "submitting"))
    cluster.worker()
    orders = cluster.wait_settled(ids, timeout_s=120)
    assert {o.status for o in orders.values()} == {"complete"}
    _assert_invariants(cluster, ids, orders)
    assert cluster.stub.orders()["count"] == 300
    assert in_flight > 0, "the kill did not interrupt any step"


def test_redis_flushed_mid_batch(cluster, caller_id, redis_url):
    """FLUSHDB of the broker mid-batch loses queued messages; the sweeper re-drives them."""
    cluster.stub.configure(latency_ms=40)
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(300)])
    cluster.wait_for(lambda: cluster.counts().get("complete", 0) >= 30)
    redis.Redis.from_url(redis_url).flushdb()
    orders = cluster.wait_settled(ids, timeout_s=120)
    assert {o.status for o in orders.values()} == {"complete"}
    _assert_invariants(cluster, ids, orders)


def test_two_workers_racing_on_duplicate_messages(cluster, caller_id):
    """Every chunk enqueued twice, two worker processes: each order moves once per step."""
    cluster.worker()
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(200)])
    from worker.queue.enqueue import enqueue_orders

    enqueue_orders(cluster.celery, ids, chunk_size=50)
    orders = cluster.wait_settled(ids)
    assert {o.status for o in orders.values()} == {"complete"}
    _assert_invariants(cluster, ids, orders)
    with transaction(cluster.db_url) as session:
        for oid in ids[:50]:
            rows = session.execute(
                select(OrderEvent.from_status, OrderEvent.to_status)
                .where(OrderEvent.order_id == oid)
                .order_by(OrderEvent.id)
            ).all()
            assert [tuple(r) for r in rows] == HAPPY
