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
from urllib.parse import urlsplit

CONNECTIONS = 64
TIMEOUT_S = 10.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Conn:
    """One keep-alive HTTP/1.1 connection: a GET, its status, its body read and dropped.

    Written for this poller (not httpx): a poll here costs the poller a few tens of
    microseconds, where httpx's async client cost 1.5 ms of CPU per GET, and on a saturated
    2-core box the poller itself (at nice -10) fell seconds behind its schedule: what it
    measured was its own lag, not the API's.
    """

    def __init__(self, host: str, port: int, head: bytes) -> None:
        self.host, self.port, self.head = host, port, head
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"GET " + path.encode() + self.head)
        reader = self.reader
        status = int((await reader.readline()).split()[1])
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run(args: argparse.Namespace) -> dict[str, float]:
    ids: list[str] = []
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []
    behind: list[float] = []
    errors = 0
    url = urlsplit(args.url)
    head = (f" HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {args.key}\r\n\r\n").encode()
    # One request per connection at a time: behind schedule, the planned requests wait in the
    # queue (their wait still counts, from the planned time).
    queue: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()

    async def connection() -> None:
        nonlocal errors
        conn = Conn(url.hostname or "127.0.0.1", url.port or 80, head)
        while (item := await queue.get()) is not None:
            order_id, planned = item
            behind.append((time.perf_counter() - planned) * 1000)
            try:
                status = await asyncio.wait_for(conn.get(f"/v1/orders/{order_id}"), TIMEOUT_S)
                if status != 200:
                    errors += 1
            except (OSError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError):
                errors += 1
                conn.close()
            latencies.append((time.perf_counter() - planned) * 1000)
            timeline.append((time.time() - (time.perf_counter() - planned), latencies[-1]))
        conn.close()

    workers = [asyncio.create_task(connection()) for _ in range(CONNECTIONS)]
    started = time.perf_counter()
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
            queue.put_nowait((random.choice(ids), planned))
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=15)
    for task in pending:  # still unanswered after 15 s: counted as errors
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
