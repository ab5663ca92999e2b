"""Real processes: ``orders worker`` and ``orders beat`` subprocesses, the stub as a subprocess,
the real database and a real Redis. Processes are started here and stopped by their PIDs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from api_stub.testing import StubControl, stub_process
from tests.helpers import add_orders
from worker.db import transaction
from worker.models import Order
from worker.queue.app import configure
from worker.queue.enqueue import enqueue_orders
from worker.states import TERMINAL

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


class Proc:
    """A child process in its own session, so SIGKILL reaches its pool children too."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args, env=self.env, stdout=out, stderr=out, start_new_session=True, cwd=REPO
            )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class Cluster:
    """A stub, worker processes and beat, sharing one database and one Redis."""

    def __init__(self, env: dict[str, str], stub_url: str, tmp: Path) -> None:
        self.env = env
        self.stub = StubControl(stub_url)
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.db_url = env["ORDERS_DATABASE_URL"]
        self.celery = configure(env["ORDERS_REDIS_URL"])

    def _orders(self, *args: str) -> Proc:
        proc = Proc(
            [sys.executable, "-m", "worker", *args],
            self.env,
            self.tmp / f"{args[0]}-{len(self.procs)}.log",
        ).start()
        self.procs.append(proc)
        return proc

    def worker(self, concurrency: int = 2) -> Proc:
        return self._orders("worker", "--concurrency", str(concurrency))

    def beat(self) -> Proc:
        return self._orders("beat")

    def submit(self, caller_id: str, payloads: list[dict[str, Any]]) -> list[str]:
        grace_s = float(self.env["ORDERS_ENQUEUE_GRACE_S"])
        ids = add_orders(self.db_url, caller_id, payloads, grace_s)
        enqueue_orders(self.celery, ids, chunk_size=50)
        return ids

    def counts(self) -> dict[str, int]:
        with transaction(self.db_url) as session:
            rows = session.execute(select(Order.status, func.count()).group_by(Order.status))
            return {status: n for status, n in rows}

    def wait_settled(self, ids: list[str], timeout_s: float = 90) -> dict[str, Order]:
        """Wait until every order is terminal or held for an operator."""
        deadline = time.monotonic() + timeout_s
        while True:
            with transaction(self.db_url) as session:
                orders = {o.id: o for o in session.scalars(select(Order).where(Order.id.in_(ids)))}
            open_ = [
                o
                for o in orders.values()
                if o.status not in TERMINAL
                and not (o.status == "submit_unknown" and o.due_at is None)
            ]
            if not open_:
                return orders
            if time.monotonic() > deadline:
                logs = "\n".join(p.log.read_text()[-3000:] for p in self.procs if p.log.exists())
                pytest.fail(f"{len(open_)} orders not settled: {self.counts()}\n{logs}")
            time.sleep(0.25)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"condition not met in time: {self.counts()}")
            time.sleep(0.1)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.stub.close()


@pytest.fixture
def cluster_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    values = dict(os.environ)
    values.update(env)
    values.update(
        {
            "ORDERS_RETRY_BASE_S": "0.05",
            "ORDERS_RETRY_CAP_S": "0.5",
            "ORDERS_RETRY_MAX_ATTEMPTS": "12",
            "ORDERS_LEASE_S": "4",
            "ORDERS_SWEEP_INTERVAL_S": "1",
            "ORDERS_ENQUEUE_GRACE_S": "3",
            "ORDERS_FOLLOW_INTERVAL_S": "0.2",
            "ORDERS_RECONCILE_DELAY_S": "0.5",
            "ORDERS_UPSTREAM_READ_TIMEOUT_S": "2",
            "ORDERS_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }
    )
    return values


@pytest.fixture
def cluster(cluster_env: dict[str, str], tmp_path: Path) -> Iterator[Cluster]:
    with stub_process(["--seed", "11", "--complete-after-s", "0.2"]) as stub_url:
        cluster_env["ORDERS_UPSTREAM_URL"] = stub_url
        c = Cluster(cluster_env, stub_url, tmp_path)
        try:
            yield c
        finally:
            c.close()
