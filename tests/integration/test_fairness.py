"""Fair share on real worker processes: a small caller is not stuck behind a big backlog, the
broker stays short, and a Redis flush in the middle loses nothing (invariant 13)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from api_stub.testing import stub_process
from tests.conftest import settings_from
from tests.helpers import add_orders, new_caller, new_payload
from tests.integration.conftest import Cluster
from worker.db import transaction
from worker.models import Order
from worker.queue.dispatcher import Dispatcher
from worker.states import TERMINAL

pytestmark = pytest.mark.slow
FINAL = [str(s) for s in TERMINAL]


def _final(db_url: str, ids: list[str]) -> int:
    with transaction(db_url) as session:
        stmt = select(func.count()).where(Order.id.in_(ids), Order.status.in_(FINAL))
        return int(session.scalar(stmt) or 0)


@pytest.fixture
def busy_cluster(cluster_env: dict[str, str], tmp_path: Path) -> Iterator[Cluster]:
    """The cluster against a stub that takes 16 calls at once, 50 ms each (160 orders/s)."""
    args = ["--seed", "11", "--latency-ms", "50", "--capacity", "16"]
    with stub_process(args) as stub_url:
        cluster_env["ORDERS_UPSTREAM_URL"] = stub_url
        cluster_env["ORDERS_UPSTREAM_MAX_IN_FLIGHT"] = "16"
        c = Cluster(cluster_env, stub_url, tmp_path)
        try:
            yield c
        finally:
            c.close()


@pytest.mark.long
def test_small_caller_finishes_while_a_big_backlog_drains(busy_cluster: Cluster, env) -> None:
    """B's 10 orders, posted after A's 2,000, are all final within seconds while much of A's
    backlog is still waiting; the broker holds a few chunks throughout; a flush loses nothing."""
    c = busy_cluster
    db = c.db_url
    big, small = new_caller(db, "big"), new_caller(db, "small")
    c.worker(concurrency=2)
    c.beat()
    settings = settings_from(env, chunk_size=50)
    client = redis.Redis.from_url(env["ORDERS_REDIS_URL"])
    dispatcher = Dispatcher(settings, client, c.celery)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], int(client.llen("orders")))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    a_ids = add_orders(db, big, [new_payload(i) for i in range(2000)], grace_s=0)
    dispatcher.run(callers=[big])
    c.wait_for(lambda: _final(db, a_ids) >= 50, timeout_s=30)  # A's backlog is draining
    b_ids = add_orders(db, small, [new_payload(10_000 + i) for i in range(10)], grace_s=0)
    accepted = time.monotonic()
    dispatcher.run(callers=[small])
    c.wait_for(lambda: _final(db, b_ids) == 10, timeout_s=30)
    b_s = time.monotonic() - accepted
    a_left = 2000 - _final(db, a_ids)
    # Behind a FIFO queue B would wait for all of A; with fair shares it finishes while a good
    # part of A still waits. Counted in A's orders, not in seconds: a busy box slows both
    # alike (bench/fairness.py measures the time).
    assert a_left > 400, f"A nearly done ({a_left} left) when B finished after {b_s:.1f} s"
    client.flushdb()  # queue, caller list, token: all gone mid-run
    orders = c.wait_settled(a_ids + b_ids, timeout_s=120)
    stop.set()
    sampler.join()
    assert {o.status for o in orders.values()} == {"complete"}
    assert c.stub.orders()["duplicates"] == {}
    # 2 worker processes x 2 chunks, plus a tick or a sweep message in passing.
    assert peak[0] <= 8, f"the broker held {peak[0]} messages"
    client.close()
