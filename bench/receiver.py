"""A webhook receiver for the chaos run: verifies every delivery with ``standardwebhooks``.

``python bench/receiver.py --port P`` serves, on 127.0.0.1:

* ``POST /hook/<name>``: a delivery for the endpoint registered as ``name``; verified with
  that endpoint's secret (``Webhook(secret).verify(body, headers)``): 204 when good, 400 when
  forged or stale, 503 while told to fail (the delivery is then retried by the sender).
* ``POST /_secret/<name>`` (body: the ``whsec_...`` secret): register an endpoint's secret.
* ``POST /_fail?seconds=S``: answer 503 to every delivery for the next S seconds.
* ``GET /_stats``: ``{"verified", "duplicates", "forged", "refused", "seen": [[order_id, type,
  status], ...]}`` (``seen``: one row per distinct verified ``webhook-id``).

It runs as its own process so that verifying thousands of deliveries never takes the CPU of
the process that measures the callers' latency.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["main"]


class State:
    """What the receiver knows: secrets, the failure window, what it has verified."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: dict[str, Webhook] = {}
        self.fail_until = 0.0
        self.seen: dict[str, tuple[str, str, str]] = {}
        self.counts = {"verified": 0, "duplicates": 0, "forged": 0, "refused": 0}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {**self.counts, "seen": list(self.seen.values())}


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:  # quiet: thousands of requests
        pass

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._answer(200, json.dumps(STATE.stats()).encode())
        else:
            self._answer(404)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self._body()
        if url.path.startswith("/_secret/"):
            with STATE.lock:
                STATE.secrets[url.path.removeprefix("/_secret/")] = Webhook(body.decode())
            self._answer(204)
        elif url.path == "/_fail":
            seconds = float(parse_qs(url.query).get("seconds", ["5"])[0])
            STATE.fail_until = time.monotonic() + seconds
            self._answer(204)
        elif url.path.startswith("/hook/"):
            self._delivery(url.path.removeprefix("/hook/"), body)
        else:
            self._answer(404)

    def _delivery(self, name: str, body: bytes) -> None:
        if time.monotonic() < STATE.fail_until:
            with STATE.lock:
                STATE.counts["refused"] += 1
            self._answer(503)
            return
        webhook = STATE.secrets.get(name)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            if webhook is None:
                raise WebhookVerificationError("unknown endpoint")
            event = webhook.verify(body, headers)
        except WebhookVerificationError:
            with STATE.lock:
                STATE.counts["forged"] += 1
            self._answer(400)
            return
        data = event.get("data") or {}
        row = (str(data.get("id")), str(event.get("type")), str(data.get("status")))
        with STATE.lock:
            key = headers.get("webhook-id", "")
            if key in STATE.seen:
                STATE.counts["duplicates"] += 1
            else:
                STATE.counts["verified"] += 1
                STATE.seen[key] = row
        self._answer(204)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
