"""API read cost (not a test): CPU of the API process per ``GET /v1/orders/{id}``, per ``304``
and per list page.

One ``orders api --workers 1`` process (no workers: the orders stay received), ``--orders``
orders POSTed as one batch, then for ``--rounds`` rounds: ``--requests`` GETs of random ids
at concurrency ``--concurrency`` (a 200 with the body), the same with ``If-None-Match`` set to
the ETag each order answered (a 304 when the view is unchanged) and ``--list-requests``
``GET /v1/orders?limit=20``. The API's CPU time (user + system, ``/proc``) is read before and
after each phase: ``ms per request = CPU delta / requests``. Medians over the rounds; the
load average is printed beside them. ``--profile DIR`` records a py-spy flame graph of the API
during one extra round of 200s (py-spy must be on PATH; root or ptrace rights).

    python bench/api_get.py --db-url postgresql://root@127.0.0.1:5432/h_speed \
        --redis-url redis://127.0.0.1:6395/0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.fleet import Fleet  # noqa: E402
from bench.pipeline import Db, payload, proc_cpu_s, proc_tree  # noqa: E402
from worker.db import dispose_all  # noqa: E402

DB_URL = "postgresql://root@127.0.0.1:5432/test_proof"


def api_cpu_s(pid: int) -> float:
    return sum(proc_cpu_s(p) for p in proc_tree(pid))


async def hammer(
    url: str, headers: dict[str, str], paths: list[tuple[str, dict[str, str]]], concurrency: int
) -> dict[int, int]:
    """GET every path (with its extra headers) at ``concurrency``; counts by status."""
    statuses: dict[int, int] = {}
    queue = list(paths)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

        async def loop() -> None:
            while queue:
                path, extra = queue.pop()
                answer = await client.get(path, headers=extra, timeout=30)
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return statuses


def phase(
    pid: int, url: str, headers: dict[str, str], paths: list[tuple[str, dict[str, str]]], c: int
) -> tuple[float, dict[int, int]]:
    """(API CPU ms per request, statuses) over ``paths``."""
    before = api_cpu_s(pid)
    statuses = asyncio.run(hammer(url, headers, paths, c))
    return 1000 * (api_cpu_s(pid) - before) / len(paths), statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-url", default=DB_URL)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--list-requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-get-"))
    db = Db(args.db_url)
    db.reset()
    fleet = Fleet(tmp, db_url=db.url, redis_url=args.redis_url, stub_args=[], settings={})
    try:
        fleet.start(apis=1, api_workers=1, hosts=0, webhook_concurrency=0)
        pid = fleet.apis[0].pid
        url = fleet.api_url(0)
        headers = {"Authorization": f"Bearer {fleet.create_key('api-get')}"}
        etags: dict[str, str] = {}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            orders = [payload(i, False) for i in range(args.orders)]
            answer = client.post("/v1/orders/batch", json={"orders": orders})
            answer.raise_for_status()
            ids = [item["order"]["id"] for item in answer.json()["results"]]
            for order_id in ids:
                etags[order_id] = client.get(f"/v1/orders/{order_id}").headers.get("etag", "")
        rnd = random.Random(1)
        rows: list[dict[str, Any]] = []
        for r in range(args.rounds):
            picks = [rnd.choice(ids) for _ in range(args.requests)]
            get_ms, s200 = phase(
                pid, url, headers, [(f"/v1/orders/{i}", {}) for i in picks], args.concurrency
            )
            cond = [(f"/v1/orders/{i}", {"If-None-Match": etags[i]}) for i in picks]
            cond_ms, s304 = phase(pid, url, headers, cond, args.concurrency)
            lists = [("/v1/orders?limit=20", {})] * args.list_requests
            list_ms, slist = phase(pid, url, headers, lists, args.concurrency)
            load = os.getloadavg()[0]
            rows.append({"get": get_ms, "cond": cond_ms, "list": list_ms, "load": load})
            print(
                f"  round {r + 1}: GET {get_ms:.3f} ms {s200}, If-None-Match {cond_ms:.3f} ms "
                f"{s304}, list(20) {list_ms:.3f} ms {slist}; load {load:.2f}",
                flush=True,
            )
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        print(
            f"API CPU ms per request (median of {args.rounds}, concurrency {args.concurrency}): "
            f"GET {med['get']:.3f}, If-None-Match {med['cond']:.3f}, list(20) {med['list']:.3f}; "
            f"load average 1 min {med['load']:.2f} ({os.uname().nodename})",
            flush=True,
        )
        if args.profile:
            spy = shutil.which("py-spy")
            if spy is None:
                raise SystemExit("py-spy not on PATH")
            args.profile.parent.mkdir(parents=True, exist_ok=True)
            rec = subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--rate", "250", "--subprocesses",
                 "--gil", "--format", "flamegraph", "-o", str(args.profile), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(2)
            picks = [rnd.choice(ids) for _ in range(args.requests * 2)]
            phase(pid, url, headers, [(f"/v1/orders/{i}", {}) for i in picks], args.concurrency)
            rec.send_signal(2)
            rec.wait(60)
            print(f"profile: {args.profile}")
    finally:
        fleet.stop_processes()
        dispose_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
