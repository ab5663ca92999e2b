"""The shared token through expiries and 401s; racing runs on the same orders."""

from __future__ import annotations

import threading
import time

from tests.helpers import add_orders, new_payload
from tests.pipeline.conftest import drive
from worker.db import transaction
from worker.repository import history


def test_expired_tokens_never_fail_an_order(runtime_factory, caller_id, stub, clean_db):
    """With a 1 s token lifetime, orders spread over 3 s all complete; ~1 token per lifetime."""
    stub.configure(token_ttl_s=1)
    rt = runtime_factory()
    ids: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < 3:
        batch = add_orders(clean_db, caller_id, [new_payload(len(ids) + i) for i in range(5)])
        ids += batch
        drive(rt, batch)
        time.sleep(0.2)
    orders = drive(rt, ids)
    assert {o.status for o in orders.values()} == {"complete"}
    stats = stub.stats()
    assert 2 <= stats["tokens_issued"] <= 6, stats
    assert stats.get("unauthorized", 0) <= 2


def test_401_refreshes_once_and_retries(runtime_factory, caller_id, stub, clean_db):
    """Tokens revoked upstream: the next call gets a 401, refreshes once and succeeds."""
    rt = runtime_factory()
    [first] = add_orders(clean_db, caller_id, [new_payload(1)])
    assert drive(rt, [first])[first].status == "complete"
    assert stub.expire_tokens() >= 1
    [second] = add_orders(clean_db, caller_id, [new_payload(2)])
    order = drive(rt, [second])[second]
    assert order.status == "complete" and order.failures == 0
    stats = stub.stats()
    assert stats["tokens_issued"] == 2


def test_workers_share_one_token(runtime_factory, caller_id, stub, clean_db):
    """Four runtimes (as four processes would) fetch one token between them."""
    runtimes = [runtime_factory() for _ in range(4)]
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(40)])
    threads = [
        threading.Thread(target=rt.pipeline.run, args=(ids[i::4],)) for i, rt in enumerate(runtimes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {o.status for o in drive(runtimes[0], ids).values()} == {"complete"}
    assert stub.stats()["tokens_issued"] == 1


def test_racing_runs_move_each_order_once(runtime_factory, caller_id, stub, clean_db):
    """Two runs on the same ids at once: every order is submitted once, each step recorded once."""
    stub.configure(latency_ms=20)
    a, b = runtime_factory(), runtime_factory()
    ids = add_orders(clean_db, caller_id, [new_payload(i) for i in range(30)])
    threads = [threading.Thread(target=rt.pipeline.run, args=(ids,)) for rt in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    orders = drive(a, ids)
    assert {o.status for o in orders.values()} == {"complete"}
    record = stub.orders()
    assert record["count"] == 30 and not record["duplicates"]
    with transaction(clean_db) as session:
        for oid in ids:
            steps = [(e.from_status, e.to_status) for e in history(session, oid)]
            assert len(steps) == len(set(steps)) == 5, steps
