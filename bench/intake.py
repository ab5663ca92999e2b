"""Benchmark of the intake API (not a test): batch intake latency and GET latency under load.

Starts the API in a child process (``uvicorn worker.api:create_app --factory``) on a free port
against ``--database-url`` (migrated to head) and ``--redis-url``, with a fresh caller, then:

* ``POST /v1/orders/batch`` of each ``--sizes`` (default 1,000 and 10,000 orders), ``--runs``
  times each: the median, min and max time until the whole answer is received (every item
  must be accepted);
* ``GET /v1/orders/{id}`` of random orders from ``--concurrency`` keep-alive connections for
  ``--duration-s``: requests/s and p50/p90/p99 latency (closed loop: this saturates the API);
* then ``GET`` at a fixed ``--get-rate`` (open loop, 16 connections; latency counted from when
  each request was due): the latency a polling client sees at that load.

``--with-pipeline`` also starts the stub (20 ms a call) and ``orders worker``, so the accepted
orders (55,000 by default) flow through the pipeline while the GETs are measured.

Afterwards the bench caller's rows and the Redis ``orders``/``webhooks`` queues of the bench
Redis database are deleted (``--keep`` keeps them): point ``--redis-url`` at a scratch database.
Example::

    python bench/intake.py --database-url postgresql://root@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from sqlalchemy import delete, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api_stub.testing import StubControl, free_port, stub_process
from worker import migrate
from worker.db import transaction
from worker.intake.callers import create_caller
from worker.models import (
    Batch,
    BatchCount,
    BatchEvent,
    BatchFinal,
    Caller,
    IdempotencyKey,
    Order,
    OrderEvent,
)
from worker.settings import normalise_database_url

ORDER: dict[str, Any] = {
    "order_type": "new",
    "orderItems": [{"offer": {"id": "a" * 40, "version": "b" * 40}, "quantity": 1}],
    "billingDetails": {
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": "ada@example.com",
        "address1": "1 Analytical Row",
        "city": "London",
        "country": "GB",
    },
    "payment": {"type": "zuora", "zuora": {"paymentMethodId": "pm-bench"}},
    "checkoutId": "basket-bench",
    "country": "GB",
}


def start_api(
    db_url: str, redis_url: str, port: int, home: str, workers: int = 1
) -> subprocess.Popen[bytes]:
    """The API in a child process; returns once ``/healthz`` answers."""
    env = {
        **os.environ,
        "ORDERS_DATABASE_URL": db_url,
        "ORDERS_REDIS_URL": redis_url,
        "ORDERS_HOME": home,
        "ORDERS_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "worker.api:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ],
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API did not start")


def batch_body(size: int, tag: str) -> bytes:
    return orjson.dumps({"orders": [{**ORDER, "external_id": f"{tag}-{i}"} for i in range(size)]})


def post_batch(
    base: str, headers: dict[str, str], body: bytes, size: int
) -> tuple[float, list[str]]:
    """Seconds until the whole answer arrived, and the accepted order ids."""
    started = time.perf_counter()
    response = httpx.post(
        f"{base}/v1/orders/batch",
        content=body,
        timeout=120,
        headers={**headers, "content-type": "application/json"},
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 202:
        raise RuntimeError(f"batch answered {response.status_code}: {response.text[:300]}")
    ids = [r["order"]["id"] for r in orjson.loads(response.content)["results"] if "order" in r]
    if len(ids) != size:
        raise RuntimeError(f"{size - len(ids)} items of the batch were not accepted")
    return elapsed, ids


async def _get_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auth: str, order_id: str
) -> bool:
    """One GET /v1/orders/{id} on a keep-alive connection; True if it answered 200."""
    writer.write(
        f"GET /v1/orders/{order_id} HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: {auth}\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200")


async def _get_loop(
    port: int, auth: str, ids: list[str], seed: int, stop_at: float, latencies: list[float]
) -> int:
    """One keep-alive connection sending GETs back to back (minimal HTTP/1.1: the client must
    cost far less than the server, or it would be what is measured). Returns the errors."""
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        if await _get_once(reader, writer, auth, rng.choice(ids)):
            latencies.append(time.perf_counter() - started)
        else:
            errors += 1
    writer.close()
    return errors


async def _paced_loop(
    port: int,
    auth: str,
    ids: list[str],
    seed: int,
    stop_at: float,
    interval_s: float,
    latencies: list[float],
) -> int:
    """Open loop: one connection sending a GET every ``interval_s``; latency is counted from
    when the request was due, so a slow answer also charges the requests queued behind it."""
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    due = time.perf_counter() + rng.uniform(0, interval_s)
    while due < stop_at:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if await _get_once(reader, writer, auth, rng.choice(ids)):
            latencies.append(time.perf_counter() - due)
        else:
            errors += 1
        due += interval_s
    writer.close()
    return errors


def paced_load(
    port: int, headers: dict[str, str], ids: list[str], rate: float, duration_s: float
) -> tuple[list[float], int]:
    """Latencies (s) of GET /v1/orders/{id} at ``rate`` requests/s over 16 connections."""
    latencies: list[float] = []
    connections = 16

    async def run() -> int:
        stop_at = time.perf_counter() + duration_s
        loops = [
            _paced_loop(
                port, headers["Authorization"], ids, i, stop_at, connections / rate, latencies
            )
            for i in range(connections)
        ]
        return sum(await asyncio.gather(*loops))

    return latencies, asyncio.run(run())


def get_load(
    port: int, headers: dict[str, str], ids: list[str], concurrency: int, duration_s: float
) -> tuple[list[float], int]:
    """Latencies (s) of GET /v1/orders/{id} from ``concurrency`` connections; error count."""
    latencies: list[float] = []

    async def run() -> int:
        stop_at = time.perf_counter() + duration_s
        loops = [
            _get_loop(port, headers["Authorization"], ids, i, stop_at, latencies)
            for i in range(concurrency)
        ]
        return sum(await asyncio.gather(*loops))

    return latencies, asyncio.run(run())


@contextlib.contextmanager
def pipeline(db_url: str, redis_url: str, home: str, nice: int) -> Iterator[None]:
    """The stub (20 ms a call) and `orders worker --nice N` on the same DB and Redis."""
    with stub_process(["--latency-ms", "20"]) as stub_url:
        # In production the upstream is remote; here its CPU must not count against the API.
        with StubControl(stub_url) as control:
            os.setpriority(os.PRIO_PROCESS, int(control.stats()["process"]["pid"]), nice)
        env = {
            **os.environ,
            "ORDERS_DATABASE_URL": db_url,
            "ORDERS_REDIS_URL": redis_url,
            "ORDERS_HOME": home,
            "ORDERS_LOG_LEVEL": "WARNING",
            "ORDERS_UPSTREAM_URL": stub_url,
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker", "--nice", str(nice)],
            env=env,
            start_new_session=True,
        )
        try:
            yield
        finally:
            os.kill(worker.pid, signal.SIGTERM)  # warm shutdown: the main process stops its pool
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(5)


def count_by_status(db_url: str, caller_id: str) -> dict[str, int]:
    """The bench caller's orders by status."""
    with transaction(db_url) as session:
        rows = session.execute(
            select(Order.status, func.count())
            .where(Order.caller_id == caller_id)
            .group_by(Order.status)
        ).all()
    return {status: int(n) for status, n in rows}


def cleanup(db_url: str, caller_id: str, redis_url: str) -> None:
    """Delete the bench caller's rows and the bench Redis queues."""
    with transaction(db_url) as session:
        ids = select(Order.id).where(Order.caller_id == caller_id).scalar_subquery()
        session.execute(delete(OrderEvent).where(OrderEvent.order_id.in_(ids)))
        session.execute(delete(Order).where(Order.caller_id == caller_id))
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.caller_id == caller_id))
        batches = select(Batch.id).where(Batch.caller_id == caller_id).scalar_subquery()
        for table in (BatchEvent, BatchCount, BatchFinal):
            session.execute(delete(table).where(table.batch_id.in_(batches)))
        session.execute(delete(Batch).where(Batch.caller_id == caller_id))
        session.execute(delete(Caller).where(Caller.id == caller_id))
    client = redis.Redis.from_url(redis_url)
    client.delete("orders", "webhooks")
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the rows and queues")
    parser.add_argument(
        "--worker-nice", type=int, default=10, help="`orders worker --nice` for --with-pipeline"
    )
    parser.add_argument(
        "--with-pipeline",
        action="store_true",
        help="run the stub and `orders worker` so the accepted orders flow during the GETs",
    )
    parser.add_argument(
        "--get-rate",
        type=float,
        default=200.0,
        help="open-loop GET rate (requests/s) measured after the closed loop",
    )
    args = parser.parse_args()

    db_url = normalise_database_url(args.database_url)
    migrate.upgrade(db_url)
    with transaction(db_url) as session:
        caller, key = create_caller(session, f"bench-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {key}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home, contextlib.ExitStack() as stack:
        proc = start_api(args.database_url, args.redis_url, port, home, args.workers)
        try:
            if args.with_pipeline:
                stack.enter_context(
                    pipeline(args.database_url, args.redis_url, home, args.worker_nice)
                )
            post_batch(base, headers, batch_body(100, "warm"), 100)
            print(f"database {db_url.split('@')[-1]}, {args.runs} runs per size")
            all_ids: list[str] = []
            for size in args.sizes:
                times = []
                for run in range(args.runs):
                    body = batch_body(size, f"{uuid.uuid4().hex[:6]}-{run}")
                    elapsed, ids = post_batch(base, headers, body, size)
                    times.append(elapsed)
                    all_ids.extend(ids)
                print(
                    f"batch {size:>6} orders ({len(body) / 1e6:.1f} MB): "
                    f"median {statistics.median(times):.3f} s  min {min(times):.3f} s  "
                    f"max {max(times):.3f} s  ({size / statistics.median(times):,.0f} orders/s)"
                )
            sample = random.Random(1).sample(all_ids, min(len(all_ids), 5000))
            latencies, errors = get_load(port, headers, sample, args.concurrency, args.duration_s)
            q = statistics.quantiles(latencies, n=100)
            running = " (pipeline running)" if args.with_pipeline else ""
            print(
                f"GET /v1/orders/{{id}} x{args.concurrency} connections, closed loop, "
                f"{args.duration_s:.0f} s{running}: {len(latencies) / args.duration_s:,.0f} req/s"
                f"  p50 {q[49] * 1000:.1f} ms  p90 {q[89] * 1000:.1f} ms  "
                f"p99 {q[98] * 1000:.1f} ms  errors {errors}"
            )
            latencies, errors = paced_load(port, headers, sample, args.get_rate, args.duration_s)
            q = statistics.quantiles(latencies, n=100)
            print(
                f"GET /v1/orders/{{id}} at {args.get_rate:.0f} req/s, open loop, "
                f"{args.duration_s:.0f} s{running}: p50 {q[49] * 1000:.1f} ms  "
                f"p90 {q[89] * 1000:.1f} ms  p99 {q[98] * 1000:.1f} ms  errors {errors}"
            )
            if args.with_pipeline:
                print(f"orders by status at the end: {count_by_status(db_url, caller.id)}")
        finally:
            proc.terminate()
            proc.wait(10)
            stack.close()  # the worker stops before its orders are deleted
            if not args.keep:
                cleanup(db_url, caller.id, args.redis_url)


if __name__ == "__main__":
    main()
