"""Open-loop poller: ``GET /v1/orders/{id}`` at a fixed rate, latency from the planned send time.

``python bench/poller.py --url U --key K --ids FILE --rate 200 --stop FILE``: every 1/rate s a
request is planned for an order id from FILE (re-read each second: the ids accepted so far);
each one's latency counts from its planned time, so a slow answer delays none of the next
ones' plans and queueing is measured (no coordinated omission). Stops when the stop file
exists (or after ``--max-s``) and prints one JSON line: count, errors, p50/p90/p99/max ms, and
how far behind its schedule the poller itself sent (``behind_p99_ms``, ``behind_max_ms``: the
time from a request's planned moment to the moment it got one of the 64 connections).
``--timeline FILE`` writes each poll's planned wall-clock time and latency (ms), a line each.
It is its own process, at a higher CPU priority (nice -10 when allowed), so that neither the
benchmark's own work nor the fleet's delays a poll on this shared machine: a caller polling us
runs on its own machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time
from pathlib import Path

import httpx

CONNECTIONS = 64


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace) -> dict[str, float]:
    ids: list[str] = []
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []
    behind: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {args.key}"}
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits) as client:
        # At most one request per connection in flight: behind schedule, the rest wait here
        # (their wait still counts, from the planned time). Queued inside httpcore instead,
        # thousands of them made its pool's assignment loop quadratic and the poller itself
        # the bottleneck (py-spy: _assign_requests_to_connections) on an overloaded machine.
        slots = asyncio.Semaphore(CONNECTIONS)

        async def one(order_id: str, planned: float) -> None:
            nonlocal errors
            async with slots:
                behind.append((time.perf_counter() - planned) * 1000)
                try:
                    answer = await client.get(f"/v1/orders/{order_id}", timeout=10)
                    if answer.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
            latencies.append((time.perf_counter() - planned) * 1000)
            timeline.append((time.time() - (time.perf_counter() - planned), latencies[-1]))

        started = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        next_read, n = 0.0, 0
        while time.perf_counter() - started < args.max_s:
            now = time.perf_counter()
            if now >= next_read:
                next_read = now + 1.0
                if Path(args.stop).exists():
                    break
                ids = Path(args.ids).read_text().split() or ids
            planned = started + n / args.rate
            if planned > now:
                await asyncio.sleep(planned - now)
            n += 1
            if ids:
                task = asyncio.create_task(one(random.choice(ids), planned))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for task in list(tasks):  # still unanswered after 15 s: counted as errors
            task.cancel()
            errors += 1
    if args.timeline:
        Path(args.timeline).write_text("".join(f"{t:.3f} {ms:.1f}\n" for t, ms in timeline))
    return {
        "count": len(latencies),
        "errors": errors,
        "p50_ms": _pct(latencies, 0.5),
        "p90_ms": _pct(latencies, 0.9),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "behind_p99_ms": _pct(behind, 0.99),
        "behind_max_ms": max(behind, default=float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--stop", required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--max-s", type=float, default=900.0)
    parser.add_argument("--timeline", help="write each poll's planned time and latency here")
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
