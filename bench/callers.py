"""Callers of the intake API for the chaos run: big batches, small batches, single orders.

Each caller is a thread with its own key and a pace (its share of the orders spread over the
feeding window). A request carries an ``Idempotency-Key``; when it fails (connection refused
while an API process restarts, a 5xx while PostgreSQL restarts, a 409 while the first attempt
is still in progress) the same request is sent again to the next API process, for at most
``RETRY_BUDGET_S``: a caller never creates an order twice and never drops one it was told 2xx.
A key claimed by a request that died with the database (or its API process) answers 409 for
up to ``IN_FLIGHT_S`` (10 s); the budget also outlasts a long PostgreSQL restart.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["UNKNOWN_SUBSCRIPTION", "Caller", "order_payload"]

RETRY_BUDGET_S = 180.0
UNKNOWN_SUBSCRIPTION = "sub-" + "f" * 32
"""Orders naming it are refused by the stub: 502 at every preview (the upstream documents 502
for invalid field values there), so they end ``failed`` with ``upstream_502`` once their retry
budget is spent (``rejected`` only if one ever reached the submit's 404)."""


def order_payload(caller: str, n: int, *, queued: bool, unknown: bool) -> dict[str, Any]:
    """A valid ``new`` order; ``queued`` ones are followed; ``unknown`` ones end ``rejected``."""
    payload: dict[str, Any] = {
        "order_type": "new",
        "external_id": f"{caller}-{n}",
        "process_immediately": not queued,
        "checkoutId": f"basket-{caller}-{n}",
        "country": "GB",
        "orderItems": [{"offer": {"id": "a" * 40, "version": "b" * 40}, "quantity": 1}],
        "billingDetails": {"firstName": "Ada", "lastName": "Lovelace", "email": "a@example.com"},
        "payment": {"type": "zuora", "zuora": {"refId": "r1"}},
    }
    if unknown:
        payload["forSubscription"] = {"id": UNKNOWN_SUBSCRIPTION}
    return payload


@dataclass
class Caller:
    """One caller posting ``total`` orders in requests of ``per_request`` over ``window_s``.

    ``per_request`` 1 uses ``POST /v1/orders``; more uses ``POST /v1/orders/batch``.
    """

    name: str
    key: str
    api_urls: list[str]
    total: int
    per_request: int
    window_s: float
    accepted: list[str] = field(default_factory=list)
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    _seq: int = 0

    def _payloads(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            self._seq += 1
            # 1 in 100 names an unknown subscription; 4 in 5 are queued upstream (followed).
            out.append(
                order_payload(
                    self.name, self._seq, queued=self._seq % 5 != 0, unknown=self._seq % 100 == 7
                )
            )
        return out

    def _post(self, client: httpx.Client, path: str, body: Any, turn: int) -> Any:
        headers = {"Authorization": f"Bearer {self.key}", "Idempotency-Key": uuid.uuid4().hex}
        deadline = time.monotonic() + RETRY_BUDGET_S
        attempt = 0
        while True:
            url = self.api_urls[(turn + attempt) % len(self.api_urls)] + path
            try:
                answer = client.post(url, json=body, headers=headers)
                if answer.status_code in (200, 201, 202):
                    return answer.json()
                failure = f"{answer.status_code} {answer.text[:200]}"
                if answer.status_code < 500 and answer.status_code != 409:
                    raise RuntimeError(f"{self.name}: refused: {failure}")
            except httpx.TransportError as exc:
                failure = type(exc).__name__
            attempt += 1
            self.retries += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: gave up after {attempt} attempts: {failure}")
            time.sleep(min(2.0, 0.2 * attempt))

    def run(self, stop: threading.Event) -> None:
        """Post until ``total`` orders were accepted, paced over the window, or ``stop``."""
        requests = max(1, -(-self.total // self.per_request))
        gap_s = self.window_s / requests
        started = time.monotonic()
        with httpx.Client(timeout=60) as client:
            for turn in range(requests):
                if stop.is_set():
                    return
                n = min(self.per_request, self.total - turn * self.per_request)
                try:
                    if self.per_request == 1:
                        view = self._post(client, "/v1/orders", self._payloads(1)[0], turn)
                        self.accepted.append(view["id"])
                    else:
                        body = {"orders": self._payloads(n)}
                        answer = self._post(client, "/v1/orders/batch", body, turn)
                        for item in answer["results"]:
                            if "order" in item:
                                self.accepted.append(item["order"]["id"])
                            else:
                                self.errors.append(str(item.get("error"))[:200])
                except RuntimeError as exc:
                    self.errors.append(str(exc))
                wait_s = started + (turn + 1) * gap_s - time.monotonic()
                if wait_s > 0 and stop.wait(wait_s):
                    return
