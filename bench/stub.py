"""Benchmark of the upstream stub: submit requests per second under load (not a test).

Starts ``python -m api_stub`` in a child process, then, for ``--duration-s`` each:

* ``threads``: ``--threads`` threads, each with its own small ``httpx.Client``;
* ``async``: ``--concurrency`` requests in flight over ``--clients`` ``AsyncClient`` s.

Prints requests/s, p50/p99 latency and errors. Example::

    python bench/stub.py --duration-s 5 --threads 2 --concurrency 50 --clients 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api_stub.testing import StubControl, stub_process

ORDER = {
    "order_type": "new",
    "external_id": "BENCH",
    "orderItems": [{"offer": {"id": "a" * 40, "version": "b" * 40}, "quantity": 1}],
    "billingDetails": {"firstName": "Ada", "lastName": "Lovelace", "country": "GB"},
    "payment": {"type": "zuora"},
    "checkoutId": "basket-bench",
    "country": "GB",
}
SUBMIT_PATH = "/api/partner/order"
TIMEOUT_S = 10.0


@dataclass
class Result:
    """Latencies (seconds) of successful calls and a count of failed ones."""

    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0

    def merge(self, other: Result) -> None:
        """Add ``other``'s figures to this one."""
        self.latencies_s.extend(other.latencies_s)
        self.errors += other.errors


def _report(name: str, result: Result, elapsed_s: float) -> float:
    count = len(result.latencies_s)
    rate = count / elapsed_s
    quantiles = statistics.quantiles(result.latencies_s, n=100) if count > 1 else [0.0] * 99
    print(
        f"{name:>8}: {rate:8.0f} req/s  p50 {quantiles[49] * 1000:6.2f} ms  "
        f"p99 {quantiles[98] * 1000:6.2f} ms  ok {count}  errors {result.errors}"
    )
    return rate


def _stub_cpu_s(control: StubControl) -> float:
    return float(control.stats()["process"]["cpu_s"])


def _report_stub_cpu(control: StubControl, cpu_before_s: float) -> None:
    # The clients share the machine with the stub; its own CPU per request shows its ceiling.
    stats = control.stats()
    calls = stats["requests"].get("submit", 0)
    cpu_ms = (float(stats["process"]["cpu_s"]) - cpu_before_s) * 1000 / max(calls, 1)
    print(f"{'':>8}  stub CPU {cpu_ms:.3f} ms/request (~{1000 / cpu_ms:.0f} req/s per core)")


def _thread_worker(base_url: str, headers: dict[str, str], stop_at: float, out: Result) -> None:
    with httpx.Client(base_url=base_url, headers=headers, timeout=TIMEOUT_S) as client:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                response = client.post(SUBMIT_PATH, json=ORDER)
            except httpx.HTTPError:
                out.errors += 1
                continue
            if response.status_code == 200:
                out.latencies_s.append(time.perf_counter() - started)
            else:
                out.errors += 1


def bench_threads(base_url: str, token: str, threads: int, duration_s: float) -> float:
    """Run ``threads`` blocking clients for ``duration_s``; return requests/s."""
    headers = {"Authorization": f"Bearer {token}"}
    stop_at = time.perf_counter() + duration_s
    results = [Result() for _ in range(threads)]
    workers = [
        threading.Thread(target=_thread_worker, args=(base_url, headers, stop_at, result))
        for result in results
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = Result()
    for result in results:
        total.merge(result)
    return _report("threads", total, time.perf_counter() - started)


async def _async_worker(client: httpx.AsyncClient, stop_at: float, out: Result) -> None:
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            response = await client.post(SUBMIT_PATH, json=ORDER)
        except httpx.HTTPError:
            out.errors += 1
            continue
        if response.status_code == 200:
            out.latencies_s.append(time.perf_counter() - started)
        else:
            out.errors += 1


async def _bench_async(
    base_url: str, token: str, concurrency: int, clients: int, duration_s: float
) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    per_client = -(-concurrency // clients)
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    pool = [
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=TIMEOUT_S, limits=limits)
        for _ in range(clients)
    ]
    result = Result()
    stop_at = time.perf_counter() + duration_s
    started = time.perf_counter()
    try:
        await asyncio.gather(
            *(_async_worker(pool[i % clients], stop_at, result) for i in range(concurrency))
        )
    finally:
        for client in pool:
            await client.aclose()
    return _report("async", result, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    """Parse options, start the stub, run the selected variants."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--variant", choices=["threads", "async", "both"], default="both")
    args = parser.parse_args(argv)

    with stub_process(["--latency-ms", str(args.latency_ms)]) as base_url:
        control = StubControl(base_url)
        print(f"stub at {base_url}, latency {args.latency_ms} ms, {args.duration_s} s per run")
        if args.variant in ("threads", "both"):
            token, cpu_before_s = control.token(), _stub_cpu_s(control)
            bench_threads(base_url, token, args.threads, args.duration_s)
            _report_stub_cpu(control, cpu_before_s)
            control.reset()
        if args.variant in ("async", "both"):
            token, cpu_before_s = control.token(), _stub_cpu_s(control)
            asyncio.run(
                _bench_async(base_url, token, args.concurrency, args.clients, args.duration_s)
            )
            _report_stub_cpu(control, cpu_before_s)
        control.close()


if __name__ == "__main__":
    main()
