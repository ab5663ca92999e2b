"""A Redis restart (not just a flush) mid-batch: workers reconnect and nothing is lost."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from api_stub.testing import free_port
from tests.helpers import new_payload
from tests.integration.conftest import Cluster
from worker import embedded_redis

pytestmark = pytest.mark.slow


@pytest.fixture
def private_redis() -> Iterator[tuple[int, list]]:
    port = free_port()
    procs = [embedded_redis.start(port)[0]]
    yield port, procs
    for proc in procs:
        proc.kill()
        proc.wait()


def _health(env: dict[str, str]) -> int:
    """Exit code of ``orders health`` with a short sweep-age limit."""
    args = [sys.executable, "-m", "worker", "health", "--max-sweep-age-s", "5"]
    return subprocess.run(args, env=env, capture_output=True, timeout=60).returncode


def _settled(cluster: Cluster, ids: list[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cluster.counts().get("complete", 0) >= len(ids):
            return True
        time.sleep(0.5)
    return False


@pytest.mark.long
def test_redis_restart_mid_batch(cluster_env, tmp_path, private_redis, caller_id):
    """Redis stopped for 2 s and started empty mid-batch: every order still completes once.

    A Celery worker may stop consuming after a Redis reconnect (celery #8030). Then, as in
    production, ``orders health`` must report it, and a restart (the supervisor's job, played
    here by the test) must finish the batch without losing or duplicating anything.
    """
    from api_stub.testing import stub_process

    port, procs = private_redis
    cluster_env["ORDERS_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    with stub_process(["--seed", "3", "--latency-ms", "40"]) as stub_url:
        cluster_env["ORDERS_UPSTREAM_URL"] = stub_url
        cluster = Cluster(cluster_env, stub_url, tmp_path)
        try:
            cluster.worker()
            cluster.beat()
            ids = cluster.submit(caller_id, [new_payload(i) for i in range(300)])
            cluster.wait_for(lambda: cluster.counts().get("complete", 0) >= 30)
            procs[0].kill()
            procs[0].wait()
            time.sleep(2)
            procs.append(embedded_redis.start(port)[0])
            if not _settled(cluster, ids, timeout_s=45):
                assert _health(cluster_env) != 0, "stuck pipeline, yet orders health is happy"
                cluster.procs[0].kill()
                cluster.worker()
            orders = cluster.wait_settled(ids, timeout_s=120)
            assert {o.status for o in orders.values()} == {"complete"}
            record = cluster.stub.orders()
            assert record["count"] == 300 and not record["duplicates"]
        finally:
            cluster.close()


def test_publish_reaches_queue_on_an_empty_redis(redis_url):
    """Publishing right after a flush lands on the queue (no exchange binding is needed)."""
    from worker.queue.app import configure
    from worker.queue.enqueue import enqueue_orders

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    enqueue_orders(configure(redis_url), ["ord_x"], chunk_size=50)
    assert client.llen("orders") == 1
