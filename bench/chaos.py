"""Chaos run (not a timed test): a whole fleet on this machine, orders from several callers,
faults injected on a schedule, then one audit table. Exit status 1 if an audit line fails.

The fleet (``bench/fleet.py``): our own Redis and PostgreSQL (fresh instances on free loopback
ports: restarting or flushing them disturbs nobody), the stub with a capacity limit, two
``orders api`` processes, two worker "hosts" (``orders worker --queues orders``, each with its
own ``ORDERS_HOME``), one ``orders beat``, a webhook pool (``orders worker --queues webhooks``)
and a webhook receiver verifying signatures (``bench/receiver.py``). A supervisor thread
restarts any of our processes that died, a second after it died, as systemd would.

Callers (``bench/callers.py``): ``bulk`` (batches of ``--big-batch``), ``small`` (batches of
10), ``single`` (one order per request), and ``file`` (``orders submit FILE`` as a user would).
Some orders are queued upstream (followed), some name an unknown subscription (the stub's
preview answers them 502 every time: ``failed``, ``upstream_502``), and the stub fails 2 % of
queued ones (``async_fail_rate``): the only failures allowed.

Faults, at fractions of ``--duration-s`` (the feeding window): SIGKILL of each worker host
twice (process group: as a host crash), a Redis restart and a flush, a PostgreSQL restart
(``pg_ctl restart -m fast``), an API process restart, a 502 storm (30 %), a full upstream
outage (``--outage-s``), token lifetimes of 3 s, ambiguous submits (the stub creates the order,
then answers after our read timeout), an upstream slower than the lease, a receiver that
answers 503 for 4 s.

    python bench/chaos.py                                  # 20,000 orders, 300 s of faults
    python bench/chaos.py --orders 400 --duration-s 50 --outage-s 8 --big-batch 100
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from api_stub.testing import free_port  # noqa: E402
from bench.callers import Caller, order_payload  # noqa: E402
from bench.chaos_audit import audit, held_or_final, print_table  # noqa: E402
from bench.fleet import Fleet, Proc, services, wait_until  # noqa: E402
from worker.settings import normalise_database_url  # noqa: E402

SMALL, BIG = ("small", "single"), ("bulk",)
FINAL_EVENTS = ["order.complete", "order.failed", "order.rejected", "order.cancelled"]


def chaos_settings(capacity: int) -> dict[str, str]:
    """Times compressed to fit a run of minutes; the budget generous against 502/429 storms.

    Every process keeps the default HTTP concurrency: the fleet-wide call budget
    (``ORDERS_UPSTREAM_MAX_IN_FLIGHT`` = the stub's capacity, and the limit it learns below
    that) is what keeps the upstream within its capacity, not a static split per process.
    """
    return {
        "ORDERS_LEASE_S": "10",
        "ORDERS_SWEEP_INTERVAL_S": "1",
        "ORDERS_ENQUEUE_GRACE_S": "5",
        "ORDERS_FOLLOW_INTERVAL_S": "0.5",
        "ORDERS_RECONCILE_DELAY_S": "1",
        "ORDERS_UPSTREAM_READ_TIMEOUT_S": "5",
        "ORDERS_RETRY_BASE_S": "0.2",
        "ORDERS_RETRY_CAP_S": "5",
        "ORDERS_RETRY_MAX_ATTEMPTS": "40",
        "ORDERS_UPSTREAM_MAX_IN_FLIGHT": str(capacity),
        "ORDERS_TOKEN_REFRESH_MARGIN_S": "1",
    }


class Supervisor:
    """Restarts any fleet process found dead for ``delay_s``, like ``Restart=always``."""

    def __init__(self, procs: Callable[[], list[Proc]], delay_s: float = 1.0) -> None:
        self.procs, self.delay_s = procs, delay_s
        self.restarts: dict[str, int] = {}
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        dead_since: dict[str, float] = {}
        while not self._stop.wait(0.25):
            if self.paused.is_set():
                continue
            for proc in self.procs():
                if proc.alive():
                    dead_since.pop(proc.name, None)
                    continue
                since = dead_since.setdefault(proc.name, time.monotonic())
                if time.monotonic() - since >= self.delay_s:
                    proc.kill()  # reap the group's leftovers first
                    proc.start()
                    self.restarts[proc.name] = self.restarts.get(proc.name, 0) + 1
                    dead_since.pop(proc.name, None)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


class Chaos:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.log: list[tuple[float, str]] = []
        self.t0 = 0.0

    def note(self, what: str) -> None:
        at = time.monotonic() - self.t0
        self.log.append((at, what))
        print(f"  t={at:6.1f}s  {what}", flush=True)

    def schedule(self, fleet: Fleet, redis_: Any, pg: Any, receiver_url: str) -> list[Any]:
        """(fraction of the duration, label, action) in time order."""
        a = self.args
        stub = fleet.stub
        assert stub is not None
        lease_ms = 10_000
        base_latency = a.latency_ms

        def kill(i: int) -> Callable[[], None]:
            return lambda: fleet.hosts[i].kill(signal.SIGKILL)

        def api_restart() -> None:
            fleet.apis[1].kill(signal.SIGKILL)  # the supervisor starts it again

        def slow() -> None:
            stub.configure(latency_ms=lease_ms + 3000)

        def receiver_fail() -> None:
            httpx.post(f"{receiver_url}/_fail?seconds=4")

        return [
            (0.05, "tokens live 3 s", lambda: stub.configure(token_ttl_s=3)),
            (0.10, "SIGKILL host-a", kill(0)),
            (0.14, "502 storm 30 % on", lambda: stub.configure(fail_rates={"502": 0.3})),
            (0.20, "SIGKILL host-b", kill(1)),
            (0.24, "502 storm off", lambda: stub.configure(fail_rates={})),
            (0.26, "Redis restart", redis_.restart),
            (0.30, "ambiguous submits 5 % on", lambda: stub.configure(ambiguous_rate=0.05)),
            (0.35, "webhook receiver fails 4 s", receiver_fail),
            (0.38, "ambiguous submits off", lambda: stub.configure(ambiguous_rate=0.0)),
            (0.40, "PostgreSQL restart", pg.restart),
            (0.45, "SIGKILL host-a", kill(0)),
            (0.50, "API process 2 SIGKILL (restarted)", api_restart),
            (0.55, "upstream slower than the lease", slow),
            (0.56, "upstream latency back", lambda: stub.configure(latency_ms=base_latency)),
            (0.60, "Redis flush", redis_.flush),
            (0.62, "tokens live 1 h", lambda: stub.configure(token_ttl_s=3600)),
            (0.65, "SIGKILL host-b", kill(1)),
            (0.70, f"upstream outage {a.outage_s:.0f} s", lambda: stub.set_outage(True)),
        ]  # fmt: skip

    def run(self) -> int:
        a = self.args
        with services(self.tmp, own_postgres=True) as (db_url, own_redis, pg):
            stub_args = ["--latency-ms", str(a.latency_ms), "--capacity", str(a.capacity)]
            stub_args += ["--complete-after-s", "0.5", "--async-fail-rate", "0.02"]
            stub_args += ["--ambiguous-hold-s", "7", "--seed", "12"]
            fleet = Fleet(
                self.tmp,
                db_url=db_url,
                redis_url=own_redis.url,
                stub_args=stub_args,
                settings=chaos_settings(a.capacity),
            )
            port = free_port()
            receiver = Proc(
                "receiver",
                [sys.executable, str(REPO / "bench" / "receiver.py"), "--port", str(port)],
                dict(__import__("os").environ),
                self.tmp / "receiver.log",
            )
            receiver_url = f"http://127.0.0.1:{port}"
            try:
                receiver.start()
                stub = fleet.start_stub()
                fleet.migrate()
                fleet.start(apis=2, hosts=2, concurrency=a.concurrency)
                wait_until(lambda: httpx.get(f"{receiver_url}/_stats"), timeout_s=10, what="rx")
                return self._drive(fleet, stub, own_redis, pg, receiver_url, db_url)
            finally:
                fleet.stop()
                receiver.stop()
                print(f"logs: {self.tmp}")

    def _setup_callers(
        self, fleet: Fleet, receiver_url: str
    ) -> tuple[list[Caller], dict[str, str]]:
        a = self.args
        urls = [fleet.api_url(0), fleet.api_url(1)]
        shares = {"bulk": 0.75, "small": 0.08, "single": 0.02}
        callers, keys = [], {}
        for name in ("bulk", "small", "single", "file"):
            keys[name] = fleet.create_key(name)
            answer = httpx.post(
                f"{urls[0]}/v1/webhook-endpoints",
                json={"url": f"{receiver_url}/hook/{name}",
                      "event_types": [*FINAL_EVENTS, "order.submit_unknown"]},
                headers={"Authorization": f"Bearer {keys[name]}"},
            )  # fmt: skip
            answer.raise_for_status()
            httpx.post(f"{receiver_url}/_secret/{name}", content=answer.json()["secret"])
        per_request = {"bulk": a.big_batch, "small": 10, "single": 1}
        for name, share in shares.items():
            total = max(per_request[name], int(a.orders * share))
            callers.append(
                Caller(name, keys[name], urls, total, per_request[name], a.duration_s * 0.8)
            )
        return callers, keys

    def _drive(
        self, fleet: Fleet, stub: Any, own_redis: Any, pg: Any, receiver_url: str, db_url: str
    ) -> int:
        a = self.args
        callers, keys = self._setup_callers(fleet, receiver_url)
        file_n = a.orders - sum(c.total for c in callers)
        orders_file = self.tmp / "orders.jsonl"
        with orders_file.open("w") as out:
            for n in range(file_n):
                payload = order_payload("file", n, queued=n % 5 != 0, unknown=n % 100 == 7)
                out.write(json.dumps(payload) + "\n")
        stub.reset_stats()
        stop = threading.Event()
        threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in callers]
        events = self.schedule(fleet, own_redis, pg, receiver_url)
        env = dict(fleet.apis[0].env, ORDERS_API_URL=fleet.api_url(0), ORDERS_API_KEY=keys["file"])
        print(f"{a.orders} orders over {a.duration_s:.0f} s; faults:", flush=True)
        with Supervisor(fleet.processes) as supervisor:
            self.t0 = time.monotonic()
            for thread in threads:
                thread.start()
            with (self.tmp / "submit.log").open("wb") as out:
                submit = subprocess.Popen(
                    [sys.executable, "-m", "worker", "submit", str(orders_file)],
                    env=env, stdout=out, stderr=out, cwd=REPO,
                )  # fmt: skip
            self.note(f"orders submit of a file of {file_n} orders (pid {submit.pid})")
            for fraction, label, action in events:
                wait_s = self.t0 + fraction * a.duration_s - time.monotonic()
                if wait_s > 0:
                    time.sleep(wait_s)
                self.note(label)
                action()
                if label.startswith("upstream outage"):
                    time.sleep(a.outage_s)
                    stub.set_outage(False)
                    self.note("upstream outage over")
            for thread in threads:
                thread.join(max(1.0, self.t0 + a.duration_s * 1.5 - time.monotonic()))
            self.note("callers done: " + ", ".join(f"{c.name} {len(c.accepted)}" for c in callers))
            accepted = {c.name: c.accepted for c in callers}
            caller_ids = self._caller_ids(db_url, keys)
            accepted["file"] = self._orders_of(db_url, caller_ids["file"])
            settled = self._wait_settled(db_url, accepted)
            self.note(f"settled: {settled}")
            try:
                submit.wait(max(5.0, a.settle_timeout_s / 4))
            except subprocess.TimeoutExpired:
                submit.kill()
            self.note(f"orders submit exited with {submit.returncode}")
            self._wait_webhooks(receiver_url, db_url, caller_ids)
        result = audit(
            db_url=db_url,
            accepted=accepted,
            caller_ids=caller_ids,
            stub_orders=stub.orders(),
            stub_stats=stub.stats(),
            receiver=httpx.get(f"{receiver_url}/_stats", timeout=60).json(),
            ceiling=a.capacity,
            small_callers=SMALL,
            big_callers=BIG,
        )
        result.add("caller requests retried (restarts, 5xx)", sum(c.retries for c in callers))
        errors = [e for c in callers for e in c.errors]
        result.add("caller requests given up", len(errors), not errors)
        result.add("restarts by the supervisor", dict(supervisor.restarts))
        print_table(result)
        if self.args.json:
            lines = [{"name": x.name, "figure": x.figure, "ok": x.ok} for x in result.lines]
            body = {"passed": result.passed, "lines": lines, "faults": self.log, "args": vars(a)}
            self.args.json.write_text(json.dumps(body, indent=1, default=str))
        for error in errors[:5]:
            print("  caller error:", error)
        return 0 if result.passed else 1

    def _query(self, db_url: str, sql: str, **params: Any) -> list[Any]:
        engine = create_engine(normalise_database_url(db_url))
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params))
        finally:
            engine.dispose()

    def _caller_ids(self, db_url: str, keys: dict[str, str]) -> dict[str, str]:
        rows = self._query(
            db_url, "SELECT name, id FROM callers WHERE name = ANY(:n)", n=list(keys)
        )
        return {name: cid for name, cid in rows}

    def _orders_of(self, db_url: str, caller_id: str) -> list[str]:
        rows = self._query(db_url, "SELECT id FROM orders WHERE caller_id = :c", c=caller_id)
        return [r[0] for r in rows]

    def _wait_settled(self, db_url: str, accepted: dict[str, list[str]]) -> str:
        """Until every accepted order is terminal or held; bounded by ``--settle-timeout-s``."""
        ids = {oid for v in accepted.values() for oid in v}
        deadline = time.monotonic() + self.args.settle_timeout_s
        while True:
            rows = self._query(db_url, "SELECT id, status, reason, due_at FROM orders")
            open_ = [r for r in rows if r[0] in ids and not held_or_final(r[1], r[2], r[3])]
            if not open_ or time.monotonic() > deadline:
                if open_:
                    self._dump_open(db_url, [r[0] for r in open_[:50]])
                return f"{len(ids) - len(open_)} of {len(ids)} terminal or held"
            time.sleep(1.0)

    def _dump_open(self, db_url: str, ids: list[str]) -> None:
        """Orders still open at the deadline, with their rows and history, for the post-mortem
        (our PostgreSQL is gone once the run ends)."""
        out = self.tmp / "open_orders.txt"
        with out.open("w") as f:
            for oid in ids:
                [row] = self._query(
                    db_url,
                    "SELECT status, reason, attempts, due_at, next_attempt_at, lease_owner,"
                    " upstream_id, updated_at FROM orders WHERE id = :i",
                    i=oid,
                )
                f.write(f"{oid} {tuple(row)}\n")
                for event in self._query(
                    db_url,
                    "SELECT at, from_status, to_status, attempt, reason, actor FROM order_events"
                    " WHERE order_id = :i ORDER BY at, id",
                    i=oid,
                ):
                    f.write(f"    {tuple(event)}\n")
        self.note(f"orders still open: see {out}")

    def _wait_webhooks(self, receiver_url: str, db_url: str, caller_ids: dict[str, str]) -> None:
        """Until no delivery of ours is pending (or 60 s): what is left shows in the audit."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = self._query(
                db_url, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
            )
            if rows[0][0] == 0:
                break
            time.sleep(1.0)
        self.note("webhook deliveries drained")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--duration-s", type=float, default=300.0)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--big-batch", type=int, default=1000)
    parser.add_argument("--capacity", type=int, default=24)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=2, help="processes per worker host")
    # Orders the stub always refuses work through ORDERS_RETRY_MAX_ATTEMPTS=40 with backoff after
    # the big batches drain: on a busy 2-core box 300 s was too short for the last of them.
    parser.add_argument("--settle-timeout-s", type=float, default=900.0)
    parser.add_argument("--json", type=Path, help="write the audit lines here (report.py)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return Chaos(args, tmp).run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
