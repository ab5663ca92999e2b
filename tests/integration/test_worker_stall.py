"""A worker that stops consuming after a Redis restart (celery #8030) exits by itself, non-zero,
and a supervisor's restart finishes the batch: nobody restarts it by hand.

The supervisor here is a loop in the test that restarts ``orders worker`` whenever it exits,
as Compose (``restart: unless-stopped``) or systemd would. The Redis is the test's own
redis-server on a free port (never the shared one), killed and started again on that port.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from api_stub.testing import free_port, stub_process
from tests.helpers import new_payload
from tests.integration.conftest import Cluster, Proc
from worker import embedded_redis
from worker.queue.watchdog import STALLED_EXIT_CODE

pytestmark = [pytest.mark.slow, pytest.mark.long]


class Supervisor:
    """Restarts the cluster's worker whenever it exits; records the exit codes."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.exit_codes: list[int] = []
        self.current: Proc = cluster.worker()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            popen = self.current.popen
            if popen is not None and popen.poll() is not None:
                self.exit_codes.append(popen.returncode)
                self.current = self.cluster.worker()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def private_redis() -> Iterator[tuple[int, list]]:
    port = free_port()
    procs = [embedded_redis.start(port)[0]]
    yield port, procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_redis_restart_under_a_supervised_worker_finishes_the_batch(
    cluster_env, tmp_path, private_redis, caller_id
):
    port, procs = private_redis
    cluster_env["ORDERS_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    with stub_process(["--seed", "3", "--latency-ms", "40"]) as stub_url:
        cluster_env["ORDERS_UPSTREAM_URL"] = stub_url
        cluster = Cluster(cluster_env, stub_url, tmp_path)
        supervisor = None
        try:
            supervisor = Supervisor(cluster)
            cluster.beat()
            ids = cluster.submit(caller_id, [new_payload(i) for i in range(300)])
            cluster.wait_for(lambda: cluster.counts().get("complete", 0) >= 30)
            procs[0].kill()
            procs[0].wait()
            time.sleep(2)
            procs.append(embedded_redis.start(port)[0])
            # Stall detection takes STALL_MIN_S (20 s) plus a check; then a restart.
            orders = cluster.wait_settled(ids, timeout_s=150)
            assert {o.status for o in orders.values()} == {"complete"}
            record = cluster.stub.orders()
            assert record["count"] == 300 and not record["duplicates"]
            assert set(supervisor.exit_codes) <= {STALLED_EXIT_CODE}
        finally:
            if supervisor is not None:
                supervisor.stop()
            cluster.close()


def test_a_worker_that_stops_consuming_exits_and_its_restart_finishes_the_batch(
    cluster_env, tmp_path, private_redis, caller_id
):
    """The worker is told to stop consuming ``orders`` (Celery remote control: the same
    symptom as #8030, on demand). It exits with the stall code by itself; the supervisor's
    restart finishes the batch, each order submitted once."""
    port, _procs = private_redis
    # A broker URL no earlier test used: kombu keeps closed pools of old URLs process-wide.
    cluster_env["ORDERS_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    with stub_process(["--seed", "5", "--complete-after-s", "0.2"]) as stub_url:
        cluster_env["ORDERS_UPSTREAM_URL"] = stub_url
        cluster = Cluster(cluster_env, stub_url, tmp_path)
        supervisor = None
        try:
            supervisor = Supervisor(cluster)
            cluster.beat()
            first = cluster.submit(caller_id, [new_payload(i) for i in range(5)])
            cluster.wait_settled(first, timeout_s=60)
            cluster.celery.control.cancel_consumer("orders", reply=True, timeout=5)
            ids = cluster.submit(caller_id, [new_payload(i) for i in range(5, 205)])
            orders = cluster.wait_settled(ids, timeout_s=150)
            assert {o.status for o in orders.values()} == {"complete"}
            assert STALLED_EXIT_CODE in supervisor.exit_codes
            record = cluster.stub.orders()
            assert record["count"] == 205 and not record["duplicates"]
        finally:
            if supervisor is not None:
                supervisor.stop()
            cluster.close()
