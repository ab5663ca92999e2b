"""End-to-end benchmark (not a test): from the first HTTP POST to the last order final.

For each stub latency (``--latency-ms 0,50,200``, per upstream call):

* NAIVE, measured first in the same run on a sample (``--naive-orders``): one sequential loop,
  preview + submit per order over one keep-alive ``httpx.Client`` and one status write per
  order (as ``bench/pipeline.py``).
* PIPELINE: ``orders api --workers 2``, one worker host (``orders worker --queues orders
  --concurrency 4 --nice 10``) and ``orders beat``; after a warm-up of 200 orders, N orders
  (``--orders``, default 10,000) are POSTed in batches of ``--batch`` (1,000) back to back by
  one client; the clock runs from the first POST to the last order final (a COUNT every
  0.1 s). Payloads carry ``process_immediately: true`` (two upstream calls per order).
* POLLING: meanwhile ``bench/poller.py`` (its own process) GETs ``/v1/orders/{id}`` of the
  orders accepted so far at ``--poll-rate`` (200/s) open loop: p50/p99 from the planned time.
* COST per order of the whole fleet over the timed window: CPU ms per process kind (API, worker,
  beat, stub, PostgreSQL backends, Redis, this poster, the poller), PostgreSQL transactions
  and rows (``pg_stat_database`` deltas), Redis commands (``INFO commandstats`` deltas),
  upstream calls (stub stats); RSS of API and worker processes after the warm-up and after N.

Redis is our own instance (its command counts are ours alone); the database is
``--db-url`` (emptied before each run). ``--json FILE`` writes the results for report.py.

    python bench/e2e.py
    python bench/e2e.py --orders 2000 --latency-ms 0,50 --naive-orders 500,50
    python bench/e2e.py --orders 3000 --latency-ms 50 --naive-orders 100 \\
        --warm-s 120 --warm-latency-ms 0

``--warm-s S --warm-latency-ms W``: after the 200-order warm-up the stub answers in W ms and
orders keep coming for S seconds on the same processes; then the stub goes back to the
measured latency and the timed window starts (an upstream whose latency moved under us).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import func, select, text, update  # noqa: E402

from bench.fleet import Fleet, services  # noqa: E402
from bench.pipeline import Db, payload, proc_cpu_s, proc_mem_kb, proc_tree  # noqa: E402
from worker.db import dispose_all, session_factory, transaction  # noqa: E402
from worker.ids import utcnow  # noqa: E402
from worker.models import Order  # noqa: E402
from worker.states import TERMINAL  # noqa: E402

DB_URL = "postgresql://root@127.0.0.1:5432/test_proof"
FINAL = sorted(str(s) for s in TERMINAL)
PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
               "tup_fetched", "tup_returned")  # fmt: skip


def naive(stub_url: str, db: Db, n: int) -> float:
    """Orders/s of the sequential loop over ``n`` stored orders (no worker running)."""
    ids, _ = db.add(n, "naive", True)
    with transaction(db.url) as session:
        rows = session.execute(select(Order.id, Order.payload).where(Order.id.in_(ids))).all()
    factory = session_factory(db.url)
    token = httpx.post(
        f"{stub_url}/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "demo-client",
              "client_secret": "demo-secret"},
    ).json()["access_token"]  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stub_url, headers=headers, timeout=30) as client:
        client.get("/_stub/config")
        started = time.perf_counter()
        for order_id, body in rows:
            client.post("/api/partner/order/preview", json=body).raise_for_status()
            answer = client.post("/api/partner/order", json=body)
            answer.raise_for_status()
            with factory() as session:
                session.execute(
                    update(Order)
                    .where(Order.id == order_id)
                    .values(status="complete", upstream_id=answer.json()["id"], updated_at=utcnow())
                )
                session.commit()
        return len(rows) / (time.perf_counter() - started)


class Meter:
    """Counters of the whole fleet, read before and after the timed window."""

    def __init__(self, fleet: Fleet, db: Db, redis_client: Any, redis_pid: int) -> None:
        self.fleet, self.db, self.redis, self.redis_pid = fleet, db, redis_client, redis_pid

    def _pg_pids(self) -> list[int]:
        with transaction(self.db.url) as session:
            sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            return [int(p) for p in session.scalars(text(sql))]

    def groups(self) -> dict[str, list[int]]:
        f = self.fleet
        return {
            "api": [p for proc in f.apis for p in proc_tree(proc.pid)],
            "worker": [p for proc in f.hosts for p in proc_tree(proc.pid)],
            "beat": [p for p in proc_tree(f.beat.pid)] if f.beat else [],
            "postgres": self._pg_pids(),
            "redis": [self.redis_pid],
            "poster": [os.getpid()],
        }

    def read(self, extra: dict[str, list[int]]) -> dict[str, Any]:
        groups = {**self.groups(), **extra}
        cpu = {name: {p: proc_cpu_s(p) for p in pids} for name, pids in groups.items()}
        with transaction(self.db.url) as session:
            cols = ", ".join(PG_COUNTERS)
            sql = f"SELECT {cols} FROM pg_stat_database WHERE datname = current_database()"
            pg = dict(zip(PG_COUNTERS, session.execute(text(sql)).one(), strict=True))
        stats = self.redis.info("commandstats")
        redis_calls = sum(int(v["calls"]) for v in stats.values())
        stub = self.fleet.stub.stats()  # type: ignore[union-attr]
        return {
            "cpu": cpu,
            "pg": pg,
            "redis": redis_calls,
            "stub_cpu": float(stub["process"]["cpu_s"]),
            "upstream": sum(int(v) for k, v in stub["requests"].items() if k != "token"),
        }

    @staticmethod
    def per_order(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
        cpu_ms = {}
        for name, pids in after["cpu"].items():
            used = sum(
                max(0.0, s - before["cpu"].get(name, {}).get(p, 0.0)) for p, s in pids.items()
            )
            cpu_ms[name] = 1000 * used / n
        cpu_ms["stub"] = 1000 * (after["stub_cpu"] - before["stub_cpu"]) / n
        pg = {k: (after["pg"][k] - before["pg"][k]) / n for k in PG_COUNTERS}
        return {
            "cpu_ms": cpu_ms,
            "cpu_ms_total": sum(cpu_ms.values()),
            "pg": pg,
            "redis_commands": (after["redis"] - before["redis"]) / n,
            "upstream_calls": (after["upstream"] - before["upstream"]) / n,
        }


NO_POLL = {k: float("nan") for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "behind_p99_ms",
                                     "behind_max_ms", "count", "errors")}  # fmt: skip


def finish_poller(poller: subprocess.Popen[bytes]) -> dict[str, float]:
    """The poller's figures; NaN (said in the output) if it could not finish in 180 s: on an
    overloaded machine it can fall so far behind that it never drains, and the run's other
    figures are still worth having."""
    try:
        out, _ = poller.communicate(timeout=180)
        return dict(json.loads(out.decode().strip().splitlines()[-1]))
    except (subprocess.TimeoutExpired, IndexError, ValueError):
        poller.kill()
        poller.wait(30)
        print("    poller did not finish within 180 s of the stop: no poll figures", flush=True)
        return dict(NO_POLL)


def rss_mb(fleet: Fleet) -> dict[str, float]:
    """Largest RSS of one process, per kind (MB)."""
    out = {}
    for kind, procs in (("api", fleet.apis), ("worker", fleet.hosts)):
        values = [proc_mem_kb(p)[0] for proc in procs for p in proc_tree(proc.pid)]
        out[kind] = max(values, default=0) / 1024
    return out


class E2E:
    def __init__(self, args: argparse.Namespace, tmp: Path, fleet: Fleet, redis_: Any) -> None:
        self.args, self.tmp, self.fleet, self.redis = args, tmp, fleet, redis_
        self.db = Db(args.db_url)
        self._seq = 0

    def _post_batches(self, client: httpx.Client, n: int, ids_file: Path) -> list[str]:
        ids: list[str] = []
        for start in range(0, n, self.args.batch):
            orders = [payload(self._seq + i, True) for i in range(min(self.args.batch, n - start))]
            self._seq += len(orders)
            answer = client.post("/v1/orders/batch", json={"orders": orders})
            answer.raise_for_status()
            ids += [item["order"]["id"] for item in answer.json()["results"]]
            ids_file.write_text("\n".join(ids[-5000:]))
        return ids

    def _final(self) -> int:
        with transaction(self.db.url) as session:
            stmt = select(func.count()).where(Order.status.in_(FINAL))
            return int(session.scalar(stmt) or 0)

    def _wait_final(self, n: int) -> None:
        deadline = time.monotonic() + self.args.timeout_s
        while self._final() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._final()} of {n} final")
            time.sleep(0.1)

    def _profile(self, latency_ms: float) -> list[subprocess.Popen[bytes]]:
        """py-spy flame graphs (CPU: ``--gil``) of the worker host and the API over the timed
        window, to ``--profile DIR`` (nothing without it)."""
        if self.args.profile is None:
            return []
        self.args.profile.mkdir(parents=True, exist_ok=True)
        spies = []
        for kind, proc in (("worker", self.fleet.hosts[0]), ("api", self.fleet.apis[0])):
            raw = self.args.profile_raw
            name = f"{kind}-{latency_ms:g}ms{self.args.profile_tag}.{'txt' if raw else 'svg'}"
            argv = ["py-spy", "record", "--pid", str(proc.pid), "--subprocesses", "--gil",
                    "--rate", "200", "--nonblocking", "-o", str(self.args.profile / name),
                    *(["--format", "raw"] if raw else [])]  # fmt: skip
            spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        time.sleep(1.0)  # py-spy attaches before the clock starts
        return spies

    def one(self, latency_ms: float, naive_n: int) -> dict[str, Any]:
        a, fleet, stub = self.args, self.fleet, self.fleet.stub
        assert stub is not None
        self.db.reset()
        self.redis.client().flushall()
        stub.reset({"latency_ms": latency_ms, "complete_after_s": 0})
        naive_rate = naive(fleet.stub_url, self.db, naive_n) if naive_n else float("nan")
        self.db.reset()
        dispose_all()
        fleet.start(apis=1, api_workers=2, hosts=1, concurrency=4, webhook_concurrency=0, nice=10)
        key = fleet.create_key(f"e2e-{latency_ms:g}")
        headers = {"Authorization": f"Bearer {key}"}
        ids_file, stop_file = self.tmp / "ids.txt", self.tmp / "stop"
        stop_file.unlink(missing_ok=True)
        try:
            with httpx.Client(base_url=fleet.api_url(0), headers=headers, timeout=120) as client:
                warm = self._post_batches(client, 200, ids_file)
                self._wait_final(len(warm))
                if a.warm_s > 0:
                    warm += self._warm_at(client, ids_file, len(warm), latency_ms)
                rss_warm = rss_mb(fleet)
                meter = Meter(fleet, self.db, self.redis.client(), self.redis.proc.pid)
                poller = subprocess.Popen(
                    [sys.executable, str(REPO / "bench" / "poller.py"), "--url", fleet.api_url(0),
                     "--key", key, "--ids", str(ids_file), "--stop", str(stop_file),
                     "--rate", str(a.poll_rate), "--max-s", str(a.timeout_s),
                     *(["--timeline", str(a.poll_timeline)] if a.poll_timeline else [])],
                    stdout=subprocess.PIPE,
                )  # fmt: skip
                extra = {"poller": [poller.pid]}
                time.sleep(0.5)  # the poller's interpreter starts outside the window
                # What a GET costs, and where: a window of polling alone before the orders.
                idle = meter.read(extra)
                time.sleep(a.get_phase_s)
                before = meter.read(extra)
                # The stub's load figures cover the timed window only (its CPU is cumulative).
                stub.reset_stats()
                before["upstream"] = 0
                gets = a.poll_rate * a.get_phase_s
                idle_cost = Meter.per_order(idle, before, 1)["cpu_ms"]
                get_cost = {k: v / gets for k, v in idle_cost.items() if v / gets >= 0.01}
                spies = self._profile(latency_ms)
                started = time.perf_counter()
                if a.poll_timeline:
                    print(f"    orders posted from {time.time():.3f} (wall clock)", flush=True)
                ids = self._post_batches(client, a.orders, ids_file)
                posted_s = time.perf_counter() - started
                self._wait_final(len(warm) + len(ids))
                elapsed = time.perf_counter() - started
                after = meter.read(extra)
                load = stub.stats()
                for spy in spies:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(120)
                stop_file.touch()
                poll = finish_poller(poller)
                rss_end = rss_mb(fleet)
        finally:
            fleet.stop_processes()
        rate = len(ids) / elapsed
        return {
            "latency_ms": latency_ms,
            "orders": len(ids),
            "naive_orders": naive_n,
            "naive_per_s": naive_rate,
            "pipeline_per_s": rate,
            "ratio": rate / naive_rate if naive_n else float("nan"),
            "post_s": posted_s,
            "elapsed_s": elapsed,
            "poll": poll,
            "poll_rate": a.poll_rate,
            "get_cpu_ms": get_cost,
            "rss_mb_warm": rss_warm,
            "rss_mb_end": rss_end,
            "warm_latency_ms": a.warm_latency_ms if a.warm_s > 0 else None,
            "warm_s": a.warm_s,
            "stub_peak_in_flight": load["peak_in_flight"],
            "stub_mean_in_flight": load["mean_in_flight"],
            "stub_refused": sum(load["refused"].values()),
            **Meter.per_order(before, after, len(ids)),
        }

    def _warm_at(
        self, client: httpx.Client, ids_file: Path, final_before: int, latency_ms: float
    ) -> list[str]:
        """Keep the pipeline busy at ``--warm-latency-ms`` for ``--warm-s`` (same processes),
        then set the stub back to ``latency_ms``: an upstream whose latency moved."""
        a, stub = self.args, self.fleet.stub
        assert stub is not None
        stub.set_latency(a.warm_latency_ms)
        posted: list[str] = []
        deadline = time.monotonic() + a.warm_s
        while time.monotonic() < deadline:
            # At most two batches ahead of the workers: busy, never a long backlog at the switch.
            if final_before + len(posted) - self._final() < 2 * a.batch:
                posted += self._post_batches(client, a.batch, ids_file)
            else:
                time.sleep(0.1)
        self._wait_final(final_before + len(posted))
        stub.set_latency(latency_ms)
        return posted


def show(row: dict[str, Any]) -> None:
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms"].items())
    pg = row["pg"]
    poll = row["poll"]
    print(
        f"  {row['latency_ms']:g} ms: pipeline {row['pipeline_per_s']:.0f}/s "
        f"(POSTs {row['post_s']:.1f} s, all final {row['elapsed_s']:.1f} s), "
        f"naive {row['naive_per_s']:.1f}/s on {row['naive_orders']}: {row['ratio']:.1f}x\n"
        f"    poll at {row['poll_rate']:.0f}/s: "
        f"p50 {poll['p50_ms']:.1f} ms, p99 {poll['p99_ms']:.1f} ms, max {poll['max_ms']:.0f} ms, "
        f"errors {poll['errors']}; poller behind schedule p99 {poll['behind_p99_ms']:.1f} ms, "
        f"max {poll['behind_max_ms']:.0f} ms\n"
        f"    CPU ms per GET (polling alone): "
        + ", ".join(f"{k} {v:.2f}" for k, v in row["get_cpu_ms"].items())
        + "\n"
        f"    CPU ms/order: {cpu} (total {row['cpu_ms_total']:.2f})\n"
        f"    per order: PG transactions {pg['xact_commit'] + pg['xact_rollback']:.1f}, rows "
        f"inserted {pg['tup_inserted']:.1f} updated {pg['tup_updated']:.1f} deleted "
        f"{pg['tup_deleted']:.1f} fetched {pg['tup_fetched']:.1f}; Redis commands "
        f"{row['redis_commands']:.1f}; upstream calls {row['upstream_calls']:.2f}\n"
        f"    RSS MB (largest process) after warm-up {row['rss_mb_warm']} -> after N "
        f"{row['rss_mb_end']}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--latency-ms", default="0,50,200")
    parser.add_argument("--naive-orders", default="2000,100,30")
    parser.add_argument("--poll-rate", type=float, default=200.0)
    parser.add_argument("--get-phase-s", type=float, default=4.0)
    parser.add_argument("--poll-timeline", type=Path, help="the poller's per-poll timeline")
    parser.add_argument("--db-url", default=DB_URL)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--warm-s",
        type=float,
        default=0.0,
        help="after the warm-up, keep posting at --warm-latency-ms this long (no restart)",
    )
    parser.add_argument("--warm-latency-ms", type=float, default=0.0)
    parser.add_argument("--profile", type=Path, help="write py-spy flame graphs to this folder")
    parser.add_argument(
        "--profile-raw", action="store_true", help="collapsed stacks (.txt) instead of SVGs"
    )
    parser.add_argument("--profile-tag", default="", help="suffix of the flame graph names")
    args = parser.parse_args(argv)
    latencies = [float(x) for x in args.latency_ms.split(",")]
    naive_ns = [int(x) for x in args.naive_orders.split(",")]
    naive_ns += [naive_ns[-1]] * (len(latencies) - len(naive_ns))
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    rows = []
    print(
        "workers run at nice 10 (the API at nice 0): a host shared by both gives the API the CPU "
        "first, as separate API and worker hosts would",
        flush=True,
    )
    try:
        with services(tmp, own_postgres=False, db_url=args.db_url) as (db_url, own_redis, _):
            fleet = Fleet(tmp, db_url=db_url, redis_url=own_redis.url, stub_args=[], settings={
                "ORDERS_ENQUEUE_GRACE_S": "30"})  # fmt: skip
            try:
                fleet.start_stub()
                bench = E2E(args, tmp, fleet, own_redis)
                for latency, naive_n in zip(latencies, naive_ns, strict=True):
                    row = bench.one(latency, naive_n)
                    show(row)
                    rows.append(row)
            finally:
                fleet.stop()
                dispose_all()
    except KeyboardInterrupt:
        return 130
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"logs: {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
