"""What each of our ASGI middlewares costs per request (not a test), in process.

A trivial ASGI app answering 200 is called ``--n`` times directly (no server, no socket), bare
and wrapped in each middleware of ``worker.api.app`` alone and all together; the process CPU
time per call minus the bare app's is the middleware's own cost. Medians of ``--rounds``.

    python bench/middleware_cost.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.types import Message, Receive, Scope, Send

from worker.api.metrics import Metrics
from worker.api.middleware import MetricsMiddleware, RequestGuard


class Route:
    path = "/v1/orders/{order_id}"


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    scope["route"] = Route
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/v1/orders/ord_0123456789abcdef0123456789abcdef",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer x"), (b"host", b"127.0.0.1")],
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(_: Message) -> None:
    return None


async def per_call_us(app: Any, n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        await app(scope(), receive, send)
    return 1e6 * (time.process_time() - started) / n


def main() -> None:
    n, rounds = 20_000, 5
    metrics = Metrics("sqlite://")
    apps = {
        "bare": bare,
        "RequestGuard": RequestGuard(bare, max_body_bytes=1 << 20, max_batch_bytes=1 << 24),
        "MetricsMiddleware": MetricsMiddleware(bare, metrics=metrics),
        "both": MetricsMiddleware(
            RequestGuard(bare, max_body_bytes=1 << 20, max_batch_bytes=1 << 24), metrics=metrics
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            samples[name].append(asyncio.run(per_call_us(app, n)))
    base = statistics.median(samples["bare"])
    for name, values in samples.items():
        med = statistics.median(values)
        extra = "" if name == "bare" else f" (+{med - base:.1f} us)"
        print(f"  {name}: {med:.1f} us per call{extra}")


if __name__ == "__main__":
    main()
