"""Benchmark of batch reads (not a test): ``GET /v1/batches/{id}`` and the results file.

For each ``--sizes`` (default 10,000 and 100,000 orders in one batch: 90 % complete, 5 %
rejected, 3 % failed, 2 % received, moved by plain UPDATEs so the triggers keep the counts),
against a real ``orders api`` process (uvicorn, one worker) on ``--database-url``:

* ``GET /v1/batches/{id}``: p50 / p99 / max over ``--runs`` keep-alive requests, and the
  database part alone (the two indexed reads) in process; beside it, what a count of the
  batch's orders costs (``GROUP BY status`` on ``ix_orders_batch_status``: the scan the
  counts rows replace).
* ``GET /v1/batches/{id}/results``: time to the first byte, to the last, lines, and the API
  process's peak RSS (``VmHWM``) before and after streaming the whole file.
* What the counts trigger costs: 10,000 status changes, one statement each, with the
  trigger on and off (PostgreSQL only).

Example::

    python bench/batches.py --database-url postgresql://root@127.0.0.1:5432/h_batch \\
        --redis-url redis://127.0.0.1:6394/0
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import func, select, text, update

from schemas.batches import BatchOptions
from worker import migrate
from worker.api.batches import read_batch
from worker.batches import store as batch_store
from worker.db import get_engine, read_session, transaction
from worker.ids import new_id, utcnow
from worker.intake.callers import create_caller
from worker.intake.checks import new_order
from worker.intake.store import create_orders
from worker.models import Order
from worker.settings import normalise_database_url

CHUNK = 10_000
MOVE_CHUNK = 500
PAYLOAD = {"order_type": "new", "country": "GB", "checkoutId": "basket-1", "orderItems": []}


def fill(db_url: str, caller_id: str, size: int) -> str:
    """One batch of ``size`` orders with a realistic spread of statuses."""
    batch_id = new_id("bat")
    now = utcnow()
    with transaction(db_url) as session:
        batch_store.create(
            session, batch_id=batch_id, caller_id=caller_id, options=BatchOptions(), now=now
        )
    for start in range(0, size, CHUNK):
        items = [
            new_order({**PAYLOAD, "external_id": f"{batch_id}-{i}"})
            for i in range(start, min(size, start + CHUNK))
        ]
        with transaction(db_url) as session:
            create_orders(
                session,
                caller_id,
                items,
                now=utcnow(),
                batch_id=batch_id,
                indexes=range(start, start + len(items)),
            )
    shares = [("complete", None, 0.90), ("rejected", "upstream_400", 0.05)]
    shares.append(("failed", "upstream_502", 0.03))
    edge = 0
    for status, reason, share in shares:
        upto = edge + int(size * share)
        # 500 orders per transaction, as every product path moves them (see README: a single
        # transaction moving N orders of one batch rewrites its counts row N times).
        for lo in range(edge, upto, MOVE_CHUNK):
            with transaction(db_url) as session:
                session.execute(
                    update(Order)
                    .where(
                        Order.batch_id == batch_id,
                        Order.batch_index >= lo,
                        Order.batch_index < min(upto, lo + MOVE_CHUNK),
                    )
                    .values(status=status, reason=reason, due_at=None, updated_at=utcnow())
                )
        edge = upto
    return batch_id


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Any, runs: int) -> list[float]:
    fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def line(label: str, ms: list[float]) -> str:
    return (
        f"{label}: p50 {statistics.median(ms):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, "
        f"max {max(ms):.2f} ms"
    )


def server_ms(db_url: str, caller_id: str, batch_id: str, runs: int = 50) -> tuple[float, float]:
    """PostgreSQL's own execution time (EXPLAIN ANALYZE) of the two reads behind the batch
    object: median and max over ``runs`` (what the load on the box adds is not in it)."""
    since = int(time.time() - 60) // batch_store.BUCKET_S + 1
    reads = [
        "SELECT * FROM batches WHERE id = :b AND caller_id = :c",
        "SELECT batch_id, status, sum(n), min(first_at), max(last_at) FROM batch_counts "
        "WHERE batch_id IN (:b) GROUP BY batch_id, status UNION ALL "
        "SELECT batch_id, 'recent', sum(n), NULL, NULL FROM batch_finals "
        "WHERE batch_id IN (:b) AND bucket >= :s GROUP BY batch_id",
    ]
    totals = []
    with get_engine(db_url).connect() as conn:
        for _ in range(runs):
            total = 0.0
            for sql in reads:
                plan = conn.execute(
                    text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"),
                    {"b": batch_id, "c": caller_id, "s": since},
                ).scalar_one()
                total += plan[0]["Planning Time"] + plan[0]["Execution Time"]
            totals.append(total)
    return statistics.median(totals), max(totals)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in kB (VmRSS, VmHWM)."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(key + ":"):
            return int(row.split()[1])
    return 0


def start_api(db_url: str, redis_url: str, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "ORDERS_DATABASE_URL": db_url,
        "ORDERS_REDIS_URL": redis_url,
        "ORDERS_HOME": str(home),
        "ORDERS_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("orders api did not start")


def trigger_cost(db_url: str, caller_id: str) -> None:
    """10,000 status changes of batch orders, one per statement (as the pipeline's bulk
    moves send them: executemany), with the counts trigger on and off."""
    engine = get_engine(db_url)
    if engine.dialect.name != "postgresql":
        return
    batch_id = fill(db_url, caller_id, CHUNK)
    with read_session(db_url) as session:
        ids = list(session.scalars(select(Order.id).where(Order.batch_id == batch_id)))
    stmt = text("UPDATE orders SET status = :to, updated_at = now() WHERE id = :id")
    figures: dict[str, list[float]] = {"on": [], "off": []}
    flip = ["previewing", "received"]
    for round_ in range(4):
        for mode in ("on", "off"):
            action = "ENABLE" if mode == "on" else "DISABLE"
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE orders {action} TRIGGER orders_batch_counts_upd"))
            to = flip[round_ % 2] if mode == "on" else flip[(round_ + 1) % 2]
            t0 = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(stmt, [{"to": to, "id": i} for i in ids])
            figures[mode].append(time.perf_counter() - t0)
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE orders ENABLE TRIGGER orders_batch_counts_upd"))
    on, off = statistics.median(figures["on"]), statistics.median(figures["off"])
    print(
        f"10,000 status changes (one statement each, one transaction): trigger on "
        f"{on * 1000:.0f} ms, off {off * 1000:.0f} ms: +{(on - off) / CHUNK * 1e6:.0f} us "
        f"per change, median of 4 (the counts of this batch are off afterwards: bench data)"
    )
    t0 = time.perf_counter()
    fill(db_url, caller_id, CHUNK)
    print(f"one 10,000-order batch stored and moved: {time.perf_counter() - t0:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--home", default="/tmp/bench-batches-home")
    args = parser.parse_args()
    db_url = normalise_database_url(args.database_url)
    migrate.upgrade(db_url)
    with transaction(db_url) as session:
        caller, key = create_caller(session, f"bench-{new_id('x')[-8:]}")
        caller_id = caller.id
    print(f"load average: {os.getloadavg()}")
    batches = {int(n): fill(db_url, caller_id, int(n)) for n in args.sizes.split(",")}
    with get_engine(db_url).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ANALYZE orders; ANALYZE batch_counts; ANALYZE batches"))
    proc, url = start_api(db_url, args.redis_url, Path(args.home))
    try:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        for size, batch_id in batches.items():
            print(f"-- batch of {size:,} orders")
            body = http.get(f"/v1/batches/{batch_id}").json()
            print(f"   counts {body['counts']}")
            ms = timed(
                lambda b=batch_id: http.get(f"/v1/batches/{b}").raise_for_status(), args.runs
            )
            print("   " + line("GET /v1/batches/{id} over HTTP", ms))

            def db_read(b: str = batch_id) -> None:
                with read_session(db_url) as session:
                    read_batch(session, caller_id, b)

            print("   " + line("its database reads alone", timed(db_read, args.runs)))
            if get_engine(db_url).dialect.name == "postgresql":
                med, top = server_ms(db_url, caller_id, batch_id)
                print(
                    f"   PostgreSQL's planning + execution of them: median {med:.3f} ms, "
                    f"max {top:.3f} ms"
                )

            def scan(b: str = batch_id) -> None:
                with read_session(db_url) as session:
                    session.execute(
                        select(Order.status, func.count())
                        .where(Order.batch_id == b)
                        .group_by(Order.status)
                    ).all()

            print(
                "   " + line("a count of its orders instead", timed(scan, max(20, args.runs // 10)))
            )
            before = vm(proc.pid, "VmHWM")
            t0 = time.perf_counter()
            first = None
            lines = 0
            with http.stream("GET", f"/v1/batches/{batch_id}/results") as response:
                for chunk in response.iter_bytes():
                    if first is None:
                        first = time.perf_counter() - t0
                    lines += chunk.count(b"\n")
            total = time.perf_counter() - t0
            print(
                f"   results file: first byte {first * 1000:.1f} ms, all {lines:,} lines "
                f"{total:.2f} s; API peak RSS {before / 1024:.0f} MB before, "
                f"{vm(proc.pid, 'VmHWM') / 1024:.0f} MB after"
            )
        trigger_cost(db_url, caller_id)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
