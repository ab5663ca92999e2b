"""Sending a chunk of webhook deliveries: signed per Standard Webhooks, concurrently, each
attempt within one deadline, at most N in flight per endpoint, errors isolated per delivery.

A delivery's fate never touches the order: webhooks are a side channel. Every attempt made is
recorded (time, status code, latency, coarse error class); one delivery's failure, whatever
it is, never stops the others of its chunk.
"""

from __future__ import annotations

import ssl
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
import structlog
from sqlalchemy import insert, select, update
from standardwebhooks.webhooks import Webhook

from worker.db import transaction
from worker.ids import utcnow
from worker.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from worker.retry_after import parse_retry_after
from worker.webhooks.outcome import Decision, decide, error_class
from worker.webhooks.slots import DeliveryClaims, EndpointSlots
from worker.webhooks.targets import Resolver, redact_url, resolve_target, system_resolve
from worker.webhooks.transport import post

log = structlog.get_logger(__name__)
COUNTDOWN_MAX_S = 30.0
# A delivery over its endpoint's in-flight cap (or past the chunk's time budget) waits this
# long, unattempted, for a free slot.
DEFER_S = 1.0


def sign_headers(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
    }


@dataclass
class Deliverer:
    """Attempts deliveries; one per worker process (its thread pool is shared by its tasks).

    ``deadline_s`` bounds a whole attempt (resolve, connect, TLS, send, headers back).
    ``resolve`` is used exactly once per attempt: the address checked is the one connected to.
    """

    db_url: str
    slots: EndpointSlots
    claims: DeliveryClaims
    executor: ThreadPoolExecutor
    allow_private: bool
    max_attempts: int
    deadline_s: float
    resolve: Resolver = system_resolve
    ssl_context: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    def run(self, delivery_ids: Sequence[str]) -> list[tuple[str, float]]:
        """Attempt each pending delivery at most once; returns ``(id, countdown)`` for short waits.

        Each endpoint gets as many slots as it has deliveries, up to its cap; each slot
        sends that endpoint's deliveries one after another.
        """
        claimed = self.claims.claim(list(dict.fromkeys(delivery_ids)))
        try:
            return self._run(claimed)
        finally:
            self.claims.release(claimed)

    def _run(self, delivery_ids: list[str]) -> list[tuple[str, float]]:
        # Loaded after the claim: a row seen pending here is not being sent by anyone else.
        with transaction(self.db_url) as session:
            rows = session.execute(
                select(WebhookDelivery, WebhookEndpoint)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(WebhookDelivery.id.in_(delivery_ids))
                .where(WebhookDelivery.status == "pending")
                .order_by(WebhookDelivery.id)
            ).all()
        queues: dict[str, deque[WebhookDelivery]] = {}
        endpoints: dict[str, WebhookEndpoint] = {}
        for delivery, endpoint in rows:
            if not endpoint.enabled:
                self._record(delivery, Decision("cancelled"), None, "endpoint_disabled", 0.0)
                continue
            queues.setdefault(endpoint.id, deque()).append(delivery)
            endpoints[endpoint.id] = endpoint
        # New attempts start only within one deadline of the chunk's start, so a task lasts
        # at most about two deadlines whatever the receivers do.
        budget_at = time.monotonic() + self.deadline_s
        futures = []
        for endpoint_id, queue in queues.items():
            for _ in range(len(queue)):
                token = self.slots.acquire(endpoint_id)
                if token is None:
                    break
                futures.append(
                    self.executor.submit(
                        self._drain, endpoints[endpoint_id], queue, token, budget_at=budget_at
                    )
                )
        requeue = [item for future in futures for item in future.result()]
        # Left over: over the endpoint's cap, or out of time; not attempted, so not counted.
        requeue += [(d.id, DEFER_S) for queue in queues.values() for d in queue]
        return requeue

    def _drain(
        self,
        endpoint: WebhookEndpoint,
        queue: deque[WebhookDelivery],
        token: str,
        *,
        budget_at: float,
    ) -> list[tuple[str, float]]:
        """Attempt ``endpoint``'s deliveries one after another on one slot, until none are
        left or the budget is spent; returns the short retries."""
        requeue: list[tuple[str, float]] = []
        try:
            while time.monotonic() < budget_at:
                try:
                    delivery = queue.popleft()
                except IndexError:
                    break
                delay = self._attempt(delivery, endpoint)
                if delay is not None and delay <= COUNTDOWN_MAX_S:
                    requeue.append((delivery.id, delay))
        finally:
            self.slots.release(endpoint.id, token)
        return requeue

    def _attempt(self, delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> float | None:
        """One attempt, recorded whatever happens; returns the delay before the next one."""
        status_code: int | None = None
        error: str | None = None
        retry_after_s: float | None = None
        started = time.perf_counter()
        try:
            target = resolve_target(
                endpoint.url, allow_private=self.allow_private, resolve=self.resolve
            )
            body = orjson.dumps(delivery.payload).decode()
            headers = sign_headers(endpoint.secret, delivery.id, utcnow(), body)
            started = time.perf_counter()
            status_code, retry_after = post(
                endpoint.url,
                target,
                body=body.encode(),
                headers=headers,
                deadline_s=self.deadline_s,
                ssl_context=self.ssl_context,
            )
            retry_after_s = parse_retry_after(retry_after)
            if not 200 <= status_code < 300:
                error = f"http_{status_code}"
        except Exception as exc:
            error = error_class(exc)
            log.warning(
                "webhook attempt failed",
                delivery_id=delivery.id,
                endpoint_id=endpoint.id,
                url=redact_url(endpoint.url),
                error_class=error,
                detail=f"{type(exc).__name__}: {exc}",
                exc_info=error == "internal_error",
            )
        latency_ms = (time.perf_counter() - started) * 1000
        decision = decide(
            status_code,
            error,
            attempts=delivery.attempts + 1,
            max_attempts=self.max_attempts,
            retry_after_s=retry_after_s,
        )
        try:
            self._record(delivery, decision, status_code, error, latency_ms)
        except Exception:
            # Not recorded: the row stays pending and the sweeper brings it back when due.
            log.exception("webhook attempt not recorded", delivery_id=delivery.id)
            return None
        return decision.delay_s

    def _record(
        self,
        delivery: WebhookDelivery,
        decision: Decision,
        status_code: int | None,
        error: str | None,
        latency_ms: float,
    ) -> None:
        now = utcnow()
        delay = decision.delay_s
        due = now + timedelta(seconds=delay) if delay is not None else None
        with transaction(self.db_url) as session:
            session.execute(
                insert(WebhookAttempt).values(
                    delivery_id=delivery.id,
                    at=now,
                    status_code=status_code,
                    latency_ms=latency_ms,
                    error=error,
                )
            )
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id)
                .values(
                    status=decision.outcome,
                    attempts=WebhookDelivery.attempts + 1,
                    due_at=due,
                    last_status_code=status_code,
                    last_error=error,
                    updated_at=now,
                )
            )
            if decision.disable_endpoint:
                session.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.id == delivery.endpoint_id)
                    .values(enabled=False, disabled_reason=decision.disable_endpoint)
                )
