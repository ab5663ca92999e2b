"""Benchmark of the fleet-wide call budget (not a test): an upstream that pushes back.

Scenarios (real ``orders worker`` prefork x4 and ``orders beat`` processes, the stub as a child
process, PostgreSQL and Redis on loopback; payloads answer ``complete`` at submit, so an order
is two calls and the ideal against a capacity C at L per call is C / (2 L) orders/s):

* ``capacity``: stub capacity 16, 50 ms per call (ideal 160 orders/s), with
  ``ORDERS_UPSTREAM_MAX_IN_FLIGHT=16`` and with it unset (the limit is learned): goodput,
  share of calls refused, peak in flight seen by the stub; beside it ``raw_16_clients``: the
  orders/s (calls / 2) that 16 plain httpx threads get from the same stub at that moment.
* ``outage``: same stub; after a third of ``--outage-orders`` completed, the stub fails every
  call (502) for ``--outage-s``: orders failed, API calls during the outage, seconds from its
  end until every order is complete.
* ``unlimited``: a stub with no capacity at 0 and 50 ms, this branch against ``--baseline``
  (another checkout, e.g. main, run with its own virtualenv): orders/s side by side.

Every process started here is stopped by its PID (its own session), also on errors.

    python bench/flow.py --repeat 3
    python bench/flow.py --only capacity --repeat 1
    python bench/flow.py --matrix --quick --rows a,c,f   # issue 15's matrix: bench/flow_matrix.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import threading  # noqa: E402

import httpx  # noqa: E402
import redis  # noqa: E402

from api_stub.testing import StubControl, stub_process  # noqa: E402
from bench.pipeline import Db, previews_until  # noqa: E402
from worker.db import dispose_all  # noqa: E402
from worker.queue.app import configure  # noqa: E402
from worker.queue.dispatcher import build_dispatcher  # noqa: E402
from worker.queue.enqueue import enqueue_orders  # noqa: E402
from worker.settings import Settings  # noqa: E402

DB_URL = "postgresql://root@127.0.0.1:5432/test_flow"
REDIS_URL = "redis://127.0.0.1:6379/11"


class Procs:
    """Worker and beat processes, each in its own session, stopped by PID."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.extra: dict[str, str] = {}

    def start(self, python: str, repo: Path, args: list[str], env: dict[str, str], log: Path):
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [python, "-m", "worker", *args],
                env=env,
                stdout=out,
                stderr=out,
                cwd=repo,
                start_new_session=True,
            )
        self.popens.append(popen)

    def stop(self) -> None:
        for popen in self.popens:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGTERM)
        for popen in self.popens:
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
        self.popens.clear()


class Bench:
    def __init__(self, args: argparse.Namespace, stub_url: str, tmp: Path) -> None:
        self.args, self.stub_url, self.tmp = args, stub_url, tmp
        self.db = Db(args.db_url)
        self.stub = StubControl(stub_url)
        self.redis = redis.Redis.from_url(args.redis_url)
        self.celery = configure(args.redis_url)

    def dispatch(self, ids: list[str], extra: dict[str, str]) -> None:
        """Hand ``ids`` (inserted due now) to the dispatcher as the intake does after commit:
        one pass with chunks sized from the fleet's limit in Redis, then the workers' own
        passes take the rest of the backlog."""
        env = self.env(REPO, extra)
        settings = Settings(**{k[len("ORDERS_"):].lower(): v for k, v in env.items()
                               if k.startswith("ORDERS_") and k != "ORDERS_HOME"})  # fmt: skip
        build_dispatcher(settings, self.redis, self.celery).run(callers=[self.db.caller_id])

    def env(self, repo: Path, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERS_")}
        home = self.tmp / f"home-{len(os.listdir(self.tmp))}"
        home.mkdir()
        env.update(
            {
                "ORDERS_DATABASE_URL": self.db.url,
                "ORDERS_REDIS_URL": self.args.redis_url,
                "ORDERS_UPSTREAM_URL": self.stub_url,
                "ORDERS_HOME": str(home),
                "ORDERS_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(repo),
                **extra,
            }
        )
        return env

    @contextlib.contextmanager
    def fleet(self, extra: dict[str, str], *, repo: Path = REPO, python: str = sys.executable):
        procs = Procs()
        procs.extra = extra
        env = self.env(repo, extra)
        try:
            procs.start(python, repo, ["worker", "--queues", "orders"], env, self.tmp / "w.log")
            procs.start(python, repo, ["beat"], env, self.tmp / "beat.log")
            warm, _ = self.db.add(40, "warm", True)
            enqueue_orders(self.celery, warm, chunk_size=50)
            self.wait("warm", 40, 120)
            yield procs
        finally:
            procs.stop()

    def reset(self, **stub: Any) -> None:
        self.db.reset()
        self.redis.flushdb()
        self.stub.reset({"latency_ms": 0, "complete_after_s": 0, **stub})

    def wait(self, batch: str, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.db.complete_count(batch) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{batch}: {self.db.counts(batch)} after {timeout_s} s")
            time.sleep(0.05)

    def api_calls(self, stats: dict[str, Any]) -> int:
        return sum(v for k, v in stats["requests"].items() if k != "token")

    def raw_calls_per_s(self, threads: int = 16, seconds: float = 3.0) -> float:
        """Previews/s of ``threads`` plain httpx clients, back to back (what the box allows)."""
        token = self.stub.token()
        done: list[int] = []  # one count per thread (list.append is atomic)
        stop = time.monotonic() + seconds

        def loop() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=self.stub_url, headers=headers, timeout=10) as http:
                done.append(previews_until(http, stop))

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        return sum(done) / seconds

    def capacity(self, ceiling: int | None) -> dict[str, float]:
        self.reset(latency_ms=50, capacity=16)
        # On a shared box the stub and clients may not reach the ideal: measure what they reach.
        achievable = self.raw_calls_per_s() / 2
        extra = {"ORDERS_UPSTREAM_MAX_IN_FLIGHT": str(ceiling)} if ceiling else {}
        with self.fleet(extra):
            n = self.args.orders
            ids, _ = self.db.add(n, "bench", True)
            self.stub.reset_stats()
            started = time.perf_counter()
            enqueue_orders(self.celery, ids, chunk_size=50)
            self.wait("bench", n, self.args.timeout_s)
            elapsed = time.perf_counter() - started
            stats = self.stub.stats()
        counts = self.db.counts("bench")
        refused = sum(stats["refused"].values())
        return {
            "goodput": counts.get("complete", 0) / elapsed,
            "ideal_share": counts.get("complete", 0) / elapsed / 160,
            "raw_16_clients": achievable,
            "refused_share": refused / max(1, self.api_calls(stats)),
            "peak": stats["peak_in_flight"],
            "not_complete": n - counts.get("complete", 0),
        }

    def outage(self) -> dict[str, float]:
        self.reset(latency_ms=50, capacity=16)
        with self.fleet({}):
            n = self.args.outage_orders
            ids, _ = self.db.add(n, "bench", True)
            self.stub.reset_stats()
            enqueue_orders(self.celery, ids, chunk_size=50)
            self.wait("bench", n // 3, self.args.timeout_s)
            self.stub.set_outage(True)
            time.sleep(self.args.outage_s)
            during = sum(self.stub.stats()["outage_requests"].values())
            self.stub.set_outage(False)
            ended = time.perf_counter()
            self.wait("bench", n, self.args.timeout_s)
            drain_s = time.perf_counter() - ended
        counts = self.db.counts("bench")
        return {
            "failed": counts.get("failed", 0),
            "calls_during": during,
            "calls_per_s": during / self.args.outage_s,
            "drain_s": drain_s,
        }

    def unlimited(self, latency_ms: float, repo: Path, python: str) -> float:
        self.reset(latency_ms=latency_ms)
        with self.fleet({"ORDERS_ENQUEUE_GRACE_S": "3600"}, repo=repo, python=python):
            n = self.args.unlimited_orders
            ids, _ = self.db.add(n, "bench", True)
            started = time.perf_counter()
            enqueue_orders(self.celery, ids, chunk_size=50)
            self.wait("bench", n, self.args.timeout_s)
            return n / (time.perf_counter() - started)


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--outage-orders", type=int, default=1000)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--unlimited-orders", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="capacity,outage,unlimited")
    parser.add_argument("--db-url", default=DB_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--baseline", type=Path, default=Path("/work/main"))
    parser.add_argument("--timeout-s", type=float, default=300.0)
    from bench import flow_matrix

    flow_matrix.add_arguments(parser)
    args = parser.parse_args()
    only = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-flow-"))
    print(f"db {args.db_url.split('@')[-1]}  redis {args.redis_url}  logs {tmp}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.matrix:
        args.tmp = tmp
        try:
            return flow_matrix.main(args)
        except KeyboardInterrupt:
            return 130
        finally:
            dispose_all()
    results: dict[str, list[dict[str, float]]] = {}
    try:
        with stub_process(["--latency-ms", "0"]) as stub_url:
            bench = Bench(args, stub_url, tmp)
            for rep in range(args.repeat):
                runs: list[tuple[str, Any]] = []
                if "capacity" in only:
                    runs += [("ceiling 16", lambda: bench.capacity(16))]
                    runs += [("no ceiling", lambda: bench.capacity(None))]
                if "outage" in only:
                    runs += [("outage", bench.outage)]
                if "unlimited" in only:
                    base_py = str(args.baseline / ".venv" / "bin" / "python")
                    for lat in (0.0, 50.0):
                        runs += [
                            (
                                f"unlimited {lat:.0f} ms",
                                lambda lat=lat, base_py=base_py: {
                                    "branch": bench.unlimited(lat, REPO, sys.executable),
                                    "baseline": bench.unlimited(lat, args.baseline, base_py),
                                },
                            )
                        ]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
