"""The dispatcher against real Redis and the database: bounded queue, fair shares, each order
taken once, and nothing lost when Redis forgets everything."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.conftest import settings_from
from tests.helpers import add_orders, learn_limit, new_caller, new_payload
from worker.api.broker import Broker
from worker.db import transaction
from worker.flow.setup import build_gate
from worker.ids import utcnow
from worker.models import Caller, Order
from worker.queue.app import configure
from worker.queue.dispatcher import Dispatcher, build_dispatcher, note_worker_process
from worker.queue.enqueue import chunks


def _queued(redis_client) -> list[list[str]]:  # type: ignore[no-untyped-def]
    import base64
    import json

    out = []
    for raw in reversed(redis_client.lrange("orders", 0, -1)):
        message = json.loads(raw)
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        out.append(args[0])
    return out


@pytest.fixture
def dispatcher(env, redis_client):  # type: ignore[no-untyped-def]
    def make(**overrides: object) -> Dispatcher:
        settings = settings_from(env, **overrides)
        return Dispatcher(settings, redis_client, configure(env["ORDERS_REDIS_URL"], settings))

    return make


def test_queue_stays_bounded_by_chunks_per_process(clean_db, redis_client, dispatcher):
    """With 5,000 orders waiting and 2 worker processes, the broker holds 2 x 2 chunks."""
    caller = new_caller(clean_db, "big")
    add_orders(clean_db, caller, [new_payload(i) for i in range(5000)], grace_s=0)
    note_worker_process(redis_client, "host:1")
    note_worker_process(redis_client, "host:2")
    d = dispatcher(chunk_size=50, dispatch_chunks_per_process=2)
    result = d.run()
    assert (result.sent, result.target) == (200, 4)
    assert [len(c) for c in _queued(redis_client)] == [50, 50, 50, 50]
    assert d.run().sent == 0  # full: nothing more until workers take some
    redis_client.lpop("orders")
    assert d.run().sent == 50


def test_small_caller_shares_equally_with_a_big_backlog(clean_db, redis_client, dispatcher):
    """A caller with 20 orders behind a caller with 3,000 gets half of every pass; within a
    caller, the oldest go first."""
    big = new_caller(clean_db, "big")
    small = new_caller(clean_db, "small")
    oldest = add_orders(clean_db, big, [new_payload(i) for i in range(100)], grace_s=0)
    time.sleep(0.01)
    add_orders(clean_db, big, [new_payload(i) for i in range(100, 3000)], grace_s=0)
    small_ids = add_orders(clean_db, small, [new_payload(i) for i in range(20)], grace_s=0)
    d = dispatcher(chunk_size=10, dispatch_chunks_per_process=2)
    d.run(callers=[big, small])
    first_chunks = _queued(redis_client)
    first = [i for chunk in first_chunks for i in chunk]
    assert Counter("small" if i in small_ids else "big" for i in first) == {"big": 10, "small": 10}
    # Chunks interleave the callers: the small caller's orders are in the first chunk too.
    assert any(i in small_ids for i in first_chunks[0])
    assert {i for i in first if i not in small_ids} <= set(oldest)
    redis_client.delete("orders")
    d.run()
    second = [i for chunk in _queued(redis_client) for i in chunk]
    assert set(small_ids) == set(first + second) & set(small_ids)  # all 20 out in two passes


def test_concurrent_passes_take_each_order_once(clean_db, redis_client, dispatcher):
    """Two passes at once (API and worker) never publish one order twice."""
    caller = new_caller(clean_db, "c")
    ids = add_orders(clean_db, caller, [new_payload(i) for i in range(300)], grace_s=0)
    d = dispatcher(chunk_size=50, dispatch_chunks_per_process=10)
    threads = [threading.Thread(target=d.run, kwargs={"callers": [caller]}) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = [i for chunk in _queued(redis_client) for i in chunk]
    assert sorted(sent) == sorted(ids)


def test_not_due_held_and_finished_orders_stay(clean_db, redis_client, dispatcher):
    """Orders scheduled later, held for an operator, or finished are not dispatched."""
    caller = new_caller(clean_db, "c")
    later, held, done = (
        add_orders(clean_db, caller, [new_payload(i)], grace_s=0) for i in range(3)
    )
    with transaction(clean_db) as session:
        soon = utcnow() + timedelta(seconds=60)
        session.execute(update(Order).where(Order.id.in_(later)).values(due_at=soon))
        session.execute(
            update(Order).where(Order.id.in_(held)).values(status="submit_unknown", due_at=None)
        )
        session.execute(
            update(Order).where(Order.id.in_(done)).values(status="complete", due_at=None)
        )
    assert dispatcher().run(rebuild=True).sent == 0


def test_redis_flush_loses_nothing(clean_db, redis_client, dispatcher):
    """After a flush (queue, caller list, everything gone) the sweep's pass finds the backlog
    in the database again, and messages lost with the flush come back after the grace."""
    caller = new_caller(clean_db, "c")
    ids = add_orders(clean_db, caller, [new_payload(i) for i in range(120)], grace_s=0)
    d = dispatcher(chunk_size=50, dispatch_chunks_per_process=1, enqueue_grace_s=0.2)
    assert d.run(callers=[caller]).sent == 50
    redis_client.flushdb()
    assert d.run(rebuild=True).sent == 50  # from the database, not from anything in Redis
    redis_client.flushdb()
    time.sleep(0.3)  # the grace of the lost messages passes
    seen: set[str] = set()
    for _ in range(6):
        d.run(rebuild=True)
        seen |= {i for chunk in _queued(redis_client) for i in chunk}
        redis_client.delete("orders")
    assert seen == set(ids)


def test_chunks_shrink_to_the_upstream_allowance(clean_db, redis_client, env):
    """With the fleet allowed 16 calls and 4 processes, a chunk holds three shares of 4."""
    for n in range(4):
        note_worker_process(redis_client, f"host:{n}")
    settings = settings_from(env, chunk_size=50)
    d = Dispatcher(
        settings, redis_client, configure(env["ORDERS_REDIS_URL"], settings), allowance=lambda: 16
    )
    assert d.chunk_size(4) == 12
    assert list(chunks(["a"] * 25, d.chunk_size(4))) == [["a"] * 12, ["a"] * 12, ["a"]]
    assert d.chunk_size(64) == 2  # never fewer than two orders per message
    d.allowance = lambda: None
    assert d.chunk_size(4) == 50


def test_the_api_and_the_worker_size_chunks_to_the_learned_limit(clean_db, redis_client, env):
    """Once the fleet learned that the upstream takes 8 calls, a pass run by the API (no gate)
    and one run by a worker process (its gate's view) both put 6 orders in a chunk for 4
    worker processes (three shares of 2)."""
    settings = settings_from(env, chunk_size=50)
    learn_limit(settings, redis_client, 8)
    broker = Broker(settings)
    try:
        assert broker.dispatcher().chunk_size(4) == 6
    finally:
        broker.close()
    gate = build_gate(settings, redis_client)
    try:
        gate.sync()
        worker = build_dispatcher(
            settings, redis_client, configure(env["ORDERS_REDIS_URL"], settings), gate=gate
        )
        assert gate.allowance() == 8
        assert worker.chunk_size(4) == 6
    finally:
        gate.close()


def test_weights_share_in_proportion(clean_db, redis_client, dispatcher):
    """A caller of weight 3 gets three slots for each slot of a caller of weight 1."""
    heavy = new_caller(clean_db, "heavy")
    light = new_caller(clean_db, "light")
    with transaction(clean_db) as session:
        session.execute(update(Caller).where(Caller.id == heavy).values(weight=3))
    heavy_ids = set(add_orders(clean_db, heavy, [new_payload(i) for i in range(500)], grace_s=0))
    add_orders(clean_db, light, [new_payload(i) for i in range(500)], grace_s=0)
    d = dispatcher(chunk_size=20, dispatch_chunks_per_process=2)
    d.run(callers=[heavy, light])
    sent = [i for chunk in _queued(redis_client) for i in chunk]
    assert len(sent) == 40 and sum(i in heavy_ids for i in sent) == 30
