"""``orders demo``: the whole pipeline on one machine, with nothing to install.

Starts a bundled Redis, the upstream stub (with a little latency and a light 502 storm), the
intake API, a worker and beat; creates a caller key and a webhook receiver; submits a sample
batch through the API and follows it to the end; then stops everything it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from rich.console import Console
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from worker import migrate
from worker.cli.api_client import ApiClient
from worker.cli.output import follow_batches, show_order, status_table
from worker.db import transaction
from worker.embedded_redis import _free_port, resolve_redis_url
from worker.intake.callers import create_caller
from worker.settings import get_settings

console = Console(stderr=True)
DEMO_SUB = "sub-00000000000000000000000000000001"


def sample_orders(count: int) -> list[dict[str, Any]]:
    """A mixed batch: new subscriptions (sync and queued), offer changes, cancellations."""
    offer = {
        "id": "8a512ee55befaea0f7fa962cea9982d0e84f0098",
        "version": "4dd34671f26fdbbf240560b78f7f2f54654cde72",
    }
    stamp = int(time.time())
    orders: list[dict[str, Any]] = []
    for n in range(count):
        ext = f"DEMO-{stamp}-{n:05d}"
        kind = n % 10
        if kind < 7:
            orders.append(
                {
                    "order_type": "new",
                    "external_id": ext,
                    "process_immediately": kind != 0,
                    "checkoutId": f"basket-demo-{n}",
                    "country": "GB",
                    "orderItems": [{"offer": offer, "quantity": 1 + n % 3}],
                    "billingDetails": {
                        "firstName": "Ada",
                        "lastName": f"Demo{n}",
                        "email": f"ada{n}@example.com",
                        "country": "GB",
                    },
                    "payment": {"type": "zuora", "zuora": {"refId": f"ref-{n}"}},
                }
            )
        elif kind < 9:
            orders.append(
                {
                    "order_type": "change_offer",
                    "external_id": ext,
                    "forSubscription": {"id": DEMO_SUB},
                    "offer": offer,
                    "change_type": "change_offer",
                    "process_immediately": True,
                }
            )
        else:
            orders.append(
                {
                    "order_type": "cancel_subscription",
                    "external_id": ext,
                    "subscriptionId": DEMO_SUB,
                    "process_immediately": True,
                    "data": {"reason": {"id": "too-expensive"}},
                }
            )
    orders.append({"order_type": "new", "external_id": f"DEMO-{stamp}-bad-1"})
    return orders


class _Receiver(BaseHTTPRequestHandler):
    secret = ""
    counts: Counter[str] = Counter()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
        try:
            event = Webhook(self.secret).verify(body, dict(self.headers.items()))
            _Receiver.counts[str(event["type"])] += 1
            self.send_response(204)
        except WebhookVerificationError:
            _Receiver.counts["bad-signature"] += 1
            self.send_response(400)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _spawn(args: list[str], env: dict[str, str], procs: list[subprocess.Popen[bytes]]) -> None:
    log = open(os.path.join(env["ORDERS_HOME"], f"demo-{args[0]}.log"), "ab")  # noqa: SIM115
    procs.append(subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log, stderr=log))


def _wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout_s:.0f} s")


def run_demo(count: int, timeout_s: float) -> int:
    """Run the demo; returns a process exit code (0 when every order settled)."""
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        ORDERS_HOME=str(settings.home.resolve()),
        ORDERS_DATABASE_URL=settings.database_url,
        ORDERS_WEBHOOK_ALLOW_PRIVATE="true",
        ORDERS_SWEEP_INTERVAL_S="2",
        ORDERS_RETRY_BASE_S="0.5",
        ORDERS_RETRY_CAP_S="5",
        ORDERS_LOG_LEVEL="WARNING",
    )
    procs: list[subprocess.Popen[bytes]] = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    serving = False
    try:
        env["ORDERS_REDIS_URL"] = resolve_redis_url(settings)
        console.print(f"redis: {env['ORDERS_REDIS_URL']}   database: {settings.database_url}")
        if "ORDERS_UPSTREAM_URL" not in os.environ:
            stub_port = _free_port()
            _spawn(
                [
                    "api_stub",
                    "--port",
                    str(stub_port),
                    "--latency-ms",
                    "20",
                    "--fail-rate-502",
                    "0.05",
                    "--complete-after-s",
                    "1",
                ],
                env,
                procs,
            )
            env["ORDERS_UPSTREAM_URL"] = f"http://127.0.0.1:{stub_port}"
            _wait_http(f"{env['ORDERS_UPSTREAM_URL']}/_stub/config")
            console.print(f"upstream stub: {env['ORDERS_UPSTREAM_URL']} (20 ms, 5% 502s)")
        migrate.upgrade(settings.database_url)
        api_port = _free_port()
        _spawn(["worker", "api", "--port", str(api_port)], env, procs)
        _spawn(["worker", "worker", "--concurrency", "2"], env, procs)
        _spawn(["worker", "beat"], env, procs)
        api_url = f"http://127.0.0.1:{api_port}"
        _wait_http(f"{api_url}/readyz")
        with transaction(settings.database_url) as session:
            _caller, key = create_caller(session, f"demo-{int(time.time())}")
        client = ApiClient(api_url, key)
        _Receiver.secret = _register_receiver(client, receiver)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        serving = True
        payloads = sample_orders(count)
        started = time.monotonic()
        answer = client.submit_batch(payloads, f"demo-{time.time()}")
        accepted = [r for r in answer["results"] if "order" in r]
        for result in answer["results"]:
            if "error" in result:
                console.print(
                    f"[yellow]rejected at intake[/yellow] #{result['index']}: "
                    f"{result['error']['message']}"
                )
        console.print(
            f"batch {answer['batch_id']}: {len(accepted)} accepted in "
            f"{time.monotonic() - started:.2f} s; following them..."
        )
        counts = follow_batches(
            client, [answer["batch_id"]], total=len(accepted), timeout_s=timeout_s
        )
        elapsed = time.monotonic() - started
        console.print(status_table(counts))
        console.print(
            f"{len(accepted)} orders settled in {elapsed:.1f} s "
            f"({len(accepted) / elapsed:.0f} orders/s)"
        )
        show_order(client, accepted[0]["order"]["id"])
        time.sleep(2)
        console.print(f"webhooks received and verified: {dict(_Receiver.counts)}")
        open_orders = len(accepted) - sum(counts[s] for s in ("complete", "rejected", "failed"))
        return 0 if open_orders == 0 else 1
    finally:
        if serving:
            receiver.shutdown()
        receiver.server_close()
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _register_receiver(client: ApiClient, receiver: ThreadingHTTPServer) -> str:
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks"
    endpoint = client.create_webhook_endpoint(
        url, event_types=["order.complete", "order.failed", "order.rejected"]
    )
    return str(endpoint["secret"])
