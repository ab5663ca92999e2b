"""What the box allows against a capacity-limited stub, with nothing else running (not a test).

Starts ``python -m api_stub`` with ``--latency-ms`` and ``--capacity`` (by refusal), then
keeps exactly ``--capacity`` previews in flight for ``--seconds`` with bare clients of several
shapes (one process of threads, processes of threads, one process per client, asyncio) and
prints calls/s, orders/s (two calls an order) against the nominal ideal, and the median call
as the client sees it. The fleet's capacity rows (``bench/flow.py --matrix``, rows c-e) are
bounded by this figure, not by the nominal ``capacity / latency``. Example::

    python bench/client_bound.py --latency-ms 50 --capacity 16 --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api_stub.testing import StubControl, stub_process
from bench.pipeline import PREVIEW_PATH, payload, previews_until


def _threads(url: str, token: str, n: int, seconds: float, out: Any) -> None:
    """``n`` threads, each a client calling back to back; puts (calls ok, latencies)."""
    done: list[int] = []  # one count per thread (list.append is atomic)
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def loop() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
            done.append(previews_until(http, stop, latencies))

    workers = [threading.Thread(target=loop) for _ in range(n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    out.put((sum(done), latencies))


def processes(url: str, token: str, procs: int, threads: int, seconds: float) -> tuple[int, list]:
    queue: Any = mp.Queue()
    children = [
        mp.Process(target=_threads, args=(url, token, threads, seconds, queue))
        for _ in range(procs)
    ]
    for p in children:
        p.start()
    results = [queue.get() for _ in children]
    for p in children:
        p.join()
    return sum(r[0] for r in results), [x for r in results for x in r[1]]


async def tasks(url: str, token: str, n: int, seconds: float) -> tuple[int, list]:
    done = [0]
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10, limits=limits) as http:

        async def one() -> None:
            i = 0
            while time.monotonic() < stop:
                started = time.perf_counter()
                response = await http.post(PREVIEW_PATH, json=payload(i, True))
                latencies.append(time.perf_counter() - started)
                i += 1
                done[0] += response.status_code == 200

        await asyncio.gather(*(one() for _ in range(n)))
    return done[0], latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    n, seconds = args.capacity, args.seconds
    ideal = n / (args.latency_ms / 1000) / 2
    stub_args = ["--latency-ms", str(args.latency_ms), "--capacity", str(n)]
    stub_args += ["--capacity-mode", "refuse"]
    with stub_process(stub_args) as url, StubControl(url) as control:
        token = control.token()
        shapes: list[tuple[str, Any]] = [
            ("1 process x 1 thread", lambda: processes(url, token, 1, 1, seconds)),
            (f"1 process x {n} threads", lambda: processes(url, token, 1, n, seconds)),
            (f"4 processes x {n // 4} threads", lambda: processes(url, token, 4, n // 4, seconds)),
            (f"{n} processes x 1 thread", lambda: processes(url, token, n, 1, seconds)),
            (f"asyncio, {n} tasks", lambda: asyncio.run(tasks(url, token, n, seconds))),
        ]
        print(f"stub {args.latency_ms:g} ms, capacity {n}: ideal {ideal:.0f} orders/s")
        for name, run in shapes:
            ok, latencies = run()
            orders = ok / seconds / 2
            median_ms = 1000 * statistics.median(latencies) if latencies else float("nan")
            print(
                f"{name:>24}: {ok / seconds:5.0f} calls/s = {orders:4.0f} orders/s"
                f" ({orders / ideal:4.0%} of ideal), median call {median_ms:.1f} ms",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
