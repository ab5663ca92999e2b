"""What the bounded h11 protocol costs against uvicorn's httptools (not a test).

Starts the API twice per round in a child process, once as ``orders api`` runs it (h11 with
``BoundedH11Protocol``: bounded header size and time) and once with ``http="httptools"``
(unbounded headers), against ``--database-url``, and drives ``GET /v1/orders/{id}`` from
``--connections`` keep-alive clients for ``--duration-s``. Prints requests/s of each run and the
medians. Example::

    python bench/http_protocol.py --database-url postgresql://root@127.0.0.1:5432/h_audit \\
        --redis-url redis://127.0.0.1:6393/14
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api_stub.testing import free_port
from tests.helpers import add_orders, new_payload
from worker import migrate
from worker.db import transaction
from worker.intake.callers import create_caller
from worker.settings import normalise_database_url

REPO = Path(__file__).resolve().parent.parent
RUN = {
    "h11 bounded": "from worker.cli import main; main()",
    "httptools": (
        "import sys, uvicorn; uvicorn.run('worker.api.app:create_app', factory=True, "
        "host='127.0.0.1', port=int(sys.argv[-1]), http='httptools', log_level='warning', "
        "access_log=False)"
    ),
}


def serve(kind: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    args = ["api", "--port", str(port)] if kind == "h11 bounded" else [str(port)]
    proc = subprocess.Popen([sys.executable, "-c", RUN[kind], *args], env=env, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} did not start")


def drive(url: str, key: str, connections: int, duration_s: float) -> float:
    done = [0] * connections
    stop = time.monotonic() + duration_s

    def loop(i: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            while time.monotonic() < stop:
                assert http.get(url).status_code == 200
                done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / duration_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=5.0)
    args = parser.parse_args()
    url = normalise_database_url(args.database_url)
    migrate.upgrade(url)
    with transaction(url) as session:
        caller, key = create_caller(session, f"http-bench-{uuid.uuid4().hex[:8]}")
        caller_id = caller.id
    [order_id] = add_orders(url, caller_id, [new_payload(1)])
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ORDERS_DATABASE_URL": url,
        "ORDERS_REDIS_URL": args.redis_url,
    }
    rates: dict[str, list[float]] = {kind: [] for kind in RUN}
    for _ in range(args.rounds):
        for kind in RUN:
            port = free_port()
            proc = serve(kind, port, env)
            try:
                rate = drive(
                    f"http://127.0.0.1:{port}/v1/orders/{order_id}",
                    key,
                    args.connections,
                    args.duration_s,
                )
            finally:
                proc.terminate()
                proc.wait(15)
            rates[kind].append(rate)
            print(f"{kind}: {rate:.0f} req/s", flush=True)
    for kind, values in rates.items():
        print(f"{kind}: median {statistics.median(values):.0f} req/s over {len(values)} runs")


if __name__ == "__main__":
    main()
