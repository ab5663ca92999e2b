"""Benchmark of fair dispatch (not a test): a big caller and a small one sharing an upstream.

Real ``orders api``, ``orders worker`` (prefork x4, orders queue) and ``orders beat``
processes, PostgreSQL and Redis on loopback, the stub as a child process with capacity 16 and
50 ms per call (an order is two calls: ideal 160 orders/s). Callers post through the API:

* ``lone order``: one order posted on an idle pipeline: milliseconds from its 202 to its
  preview leaving (the ``previewing`` history row; target about 100 ms).
* ``B alone``: caller B posts a batch of 20 on an idle pipeline; seconds from its 202 to the
  last of them final.
* ``A alone``: caller A posts 10,000 in one batch; goodput (orders/s from the 202 to the last
  final).
* ``A then B``: A posts 10,000, B posts 20 two seconds later: B's seconds to all final
  (target: at most 2 x B alone + 1 s), total goodput against A alone (target: >= 95 %), the
  broker's peak ``orders`` queue length and Redis memory while A's backlog drains.
* ``backlog``: 10,000 and then 100,000 due orders in the database with the fleet running: the
  broker's peak queue length and Redis memory over a few seconds, beside what the same backlog
  costs Redis as one message per chunk (how intake enqueued before the dispatcher).

Every process started here is stopped by its PID (its own session), also on errors.

    python bench/fairness.py --repeat 3
    python bench/fairness.py --only backlog --repeat 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import func, select, update  # noqa: E402

from api_stub.testing import StubControl, free_port, stub_process  # noqa: E402
from bench.flow import Procs  # noqa: E402
from bench.pipeline import Db, payload  # noqa: E402
from worker.db import dispose_all, transaction  # noqa: E402
from worker.ids import utcnow  # noqa: E402
from worker.intake.callers import create_caller  # noqa: E402
from worker.models import Order, OrderEvent  # noqa: E402
from worker.queue.app import configure  # noqa: E402
from worker.queue.enqueue import enqueue_orders  # noqa: E402
from worker.states import TERMINAL  # noqa: E402

DB_URL = "postgresql://root@127.0.0.1:5432/test_flow"
REDIS_URL = "redis://127.0.0.1:6379/11"
FINAL = sorted(str(s) for s in TERMINAL)


class Sampler:
    """Samples the ``orders`` queue length and Redis memory every 50 ms; keeps the peaks."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.peak_len = 0
        self.peak_mem = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_len = max(self.peak_len, int(self.client.llen("orders")))
            self.peak_mem = max(self.peak_mem, int(self.client.info("memory")["used_memory"]))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Bench:
    def __init__(self, args: argparse.Namespace, stub_url: str, tmp: Path) -> None:
        self.args, self.stub_url, self.tmp = args, stub_url, tmp
        self.db = Db(args.db_url)
        self.stub = StubControl(stub_url)
        self.redis = redis.Redis.from_url(args.redis_url)
        self.port = free_port()
        self.keys: dict[str, str] = {}

    @contextlib.contextmanager
    def fleet(self) -> Any:
        """API, worker and beat on a fresh database and Redis; callers A and B with keys."""
        self.db.reset()
        self.redis.flushdb()
        self.stub.reset({"latency_ms": 50, "complete_after_s": 0, "capacity": 16})
        with transaction(self.db.url) as session:
            self.keys = {name: create_caller(session, name)[1] for name in ("A", "B")}
        env = {
            "ORDERS_DATABASE_URL": self.db.url,
            "ORDERS_REDIS_URL": self.args.redis_url,
            "ORDERS_UPSTREAM_URL": self.stub_url,
            "ORDERS_HOME": str(self.tmp / "home"),
            "ORDERS_LOG_LEVEL": "WARNING",
            "ORDERS_SWEEP_INTERVAL_S": "1",
            "PYTHONPATH": str(REPO),
        }
        if self.args.ceiling:
            env["ORDERS_UPSTREAM_MAX_IN_FLIGHT"] = str(self.args.ceiling)
        procs = Procs()
        python = sys.executable
        try:
            procs.start(python, REPO, ["api", "--port", str(self.port)], env, self.tmp / "api.log")
            procs.start(python, REPO, ["worker", "--queues", "orders"], env, self.tmp / "w.log")
            procs.start(python, REPO, ["beat"], env, self.tmp / "beat.log")
            self._wait_api()
            self.post("A", 40)  # warm the workers, the token and the learned limit
            self.wait_final(self._all_batches(), 40)
            yield
        finally:
            procs.stop()

    def _wait_api(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError("the API did not start")

    def post(self, caller: str, n: int) -> tuple[str, float]:
        """Post ``n`` orders for ``caller`` in one batch; returns the batch id and its 202 time."""
        # No external_id: the same payload posted again is a new order, not a repeat.
        orders = [payload(i, True) for i in range(n)]
        for item in orders:
            item.pop("external_id", None)
        body = {"orders": orders}
        headers = {"Authorization": f"Bearer {self.keys[caller]}"}
        url = f"http://127.0.0.1:{self.port}/v1/orders/batch"
        answer = httpx.post(url, json=body, headers=headers, timeout=120)
        answer.raise_for_status()
        return answer.json()["batch_id"], time.perf_counter()

    def _all_batches(self) -> list[str]:
        with transaction(self.db.url) as session:
            return [b for b in session.scalars(select(Order.batch_id).distinct()) if b]

    def final(self, batches: list[str]) -> int:
        with transaction(self.db.url) as session:
            stmt = select(func.count()).where(Order.batch_id.in_(batches), Order.status.in_(FINAL))
            return int(session.scalar(stmt) or 0)

    def wait_final(self, batches: list[str], n: int) -> float:
        deadline = time.monotonic() + self.args.timeout_s
        while self.final(batches) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.final(batches)} of {n} final")
            time.sleep(0.02)
        return time.perf_counter()

    def lone(self) -> dict[str, float]:
        """Seconds from a lone order's 202 to its preview leaving (its ``previewing`` row)."""
        with self.fleet():
            time.sleep(2.0)  # idle: the warm-up's chunks are long done
            gaps = []
            for _ in range(5):
                batch, _ = self.post("B", 1)
                accepted_at = utcnow()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    with transaction(self.db.url) as session:
                        at = session.scalar(
                            select(func.min(OrderEvent.at))
                            .join(Order, Order.id == OrderEvent.order_id)
                            .where(Order.batch_id == batch, OrderEvent.to_status == "previewing")
                        )
                    if at is not None:
                        gaps.append(max(0.0, (at - accepted_at).total_seconds()))
                        break
                    time.sleep(0.005)
                time.sleep(0.5)
        return {"to_preview_ms": 1000 * statistics.median(gaps), "max_ms": 1000 * max(gaps)}

    def b_alone(self) -> dict[str, float]:
        with self.fleet():
            batch, accepted = self.post("B", self.args.small)
            done = self.wait_final([batch], self.args.small)
        return {"b_s": done - accepted}

    def a_alone(self) -> dict[str, float]:
        with self.fleet():
            batch, accepted = self.post("A", self.args.big)
            done = self.wait_final([batch], self.args.big)
        return {"goodput": self.args.big / (done - accepted)}

    def a_then_b(self) -> dict[str, float]:
        with self.fleet(), Sampler(self.redis) as sampler:
            a_batch, a_accepted = self.post("A", self.args.big)
            time.sleep(2.0)
            b_batch, b_accepted = self.post("B", self.args.small)
            b_done = self.wait_final([b_batch], self.args.small)
            a_left = self.args.big - self.final([a_batch])
            done = self.wait_final([a_batch, b_batch], self.args.big + self.args.small)
        return {
            "b_s": b_done - b_accepted,
            "a_left_when_b_done": a_left,
            "goodput": (self.args.big + self.args.small) / (done - a_accepted),
            "peak_queue": sampler.peak_len,
            "peak_redis_mb": sampler.peak_mem / 1e6,
        }

    def backlog(self, n: int) -> dict[str, float]:
        """Peak queue and Redis memory with ``n`` due orders waiting, and the old way's cost."""
        with self.fleet():
            ids, _ = self.db.add(n, "backlog", True)
            with transaction(self.db.url) as session:
                session.execute(
                    update(Order).where(Order.batch_id == "backlog").values(due_at=utcnow())
                )
            base = int(self.redis.info("memory")["used_memory"])
            with Sampler(self.redis) as sampler:
                time.sleep(self.args.backlog_s)
        scratch = redis.Redis.from_url(self.args.redis_url)
        scratch.flushdb()
        before = int(scratch.info("memory")["used_memory"])
        enqueue_orders(configure(self.args.redis_url), ids, chunk_size=50)
        old_len = int(scratch.llen("orders"))
        old_mb = (int(scratch.info("memory")["used_memory"]) - before) / 1e6
        scratch.flushdb()
        return {
            "peak_queue": sampler.peak_len,
            "redis_mb_over_idle": max(0, sampler.peak_mem - base) / 1e6,
            "old_queue": old_len,
            "old_redis_mb": old_mb,
        }


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--backlogs", default="10000,100000")
    parser.add_argument("--backlog-s", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="lone_order,b_alone,a_alone,a_then_b,backlog")
    parser.add_argument("--db-url", default=DB_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--ceiling", type=int, help="ORDERS_UPSTREAM_MAX_IN_FLIGHT (default unset)")
    parser.add_argument("--json", type=Path, help="write the medians here")
    args = parser.parse_args()
    only = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-fair-"))
    print(f"db {args.db_url.split('@')[-1]}  redis {args.redis_url}  logs {tmp}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: dict[str, list[dict[str, float]]] = {}
    try:
        with stub_process(["--latency-ms", "50", "--capacity", "16"]) as stub_url:
            bench = Bench(args, stub_url, tmp)
            runs: list[tuple[str, Any]] = [
                ("lone order", bench.lone),
                ("B alone", bench.b_alone),
                ("A alone", bench.a_alone),
                ("A then B", bench.a_then_b),
            ]
            runs = [(name, run) for name, run in runs if name.lower().replace(" ", "_") in only]
            if "backlog" in only:
                for n in (int(x) for x in args.backlogs.split(",")):
                    runs.append((f"backlog {n}", lambda n=n: bench.backlog(n)))
            for rep in range(args.repeat):
                for name, run in runs:
                    row = run()
                    results.setdefault(name, []).append(row)
                    shown = ", ".join(f"{k} {v:.3g}" for k, v in row.items())
                    print(f"[{rep + 1}] {name}: {shown}", flush=True)
    except KeyboardInterrupt:
        return 130
    finally:
        dispose_all()
    print(f"\nmedians of {args.repeat}:")
    for name, rows in results.items():
        print(f"  {name}: " + ", ".join(f"{k} {med(rows, k):.3g}" for k in rows[0]))
    if args.json:
        medians = {name: {k: med(rows, k) for k in rows[0]} for name, rows in results.items()}
        args.json.write_text(json.dumps(medians, indent=1))
    if {"B alone", "A then B"} <= results.keys():
        alone, mixed = med(results["B alone"], "b_s"), med(results["A then B"], "b_s")
        print(f"B with A's backlog: {mixed:.2f} s against a bound of {2 * alone + 1:.2f} s")
    if {"A alone", "A then B"} <= results.keys():
        ratio = med(results["A then B"], "goodput") / med(results["A alone"], "goodput")
        print(f"goodput with B against A alone: {ratio:.1%} (target >= 95 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
