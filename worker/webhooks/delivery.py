"""Sending a chunk of webhook deliveries: signed per Standard Webhooks, concurrently, each
attempt within one deadline, at most N in flight per endpoint, errors isolated per delivery.

A delivery's fate never touches the order: webhooks are a side channel. Every attempt made is
recorded (time, status code, latency, coarse error class); one delivery's failure, whatever
it is, never stops the others of its chunk.
"""

from __future__ import annotations

import ssl
import time
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
from worker.webhooks.slots import EndpointSlots
from worker.webhooks.targets import Resolver, redact_url, resolve_target, system_resolve
from worker.webhooks.transport import post

log = structlog.get_logger(__name__)
COUNTDOWN_MAX_S = 30.0
# A delivery over its endpoint's in-flight cap waits this long, unattempted, for a free slot.
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
    executor: ThreadPoolExecutor
    allow_private: bool
    max_attempts: int
    deadline_s: float
    resolve: Resolver = system_resolve
    ssl_context: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    def run(self, delivery_ids: Sequence[str]) -> list[tuple[str, float]]:
        """Attempt each pending delivery once; returns ``(id, countdown)`` for short waits."""
        with transaction(self.db_url) as session:
            rows = session.execute(
                select(WebhookDelivery, WebhookEndpoint)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(WebhookDelivery.id.in_(list(delivery_ids)))
                .where(WebhookDelivery.status == "pending")
                .order_by(WebhookDelivery.id)
            ).all()
        requeue: list[tuple[str, float]] = []
        admitted: list[tuple[WebhookDelivery, WebhookEndpoint, str]] = []
        full: set[str] = set()
        for delivery, endpoint in rows:
            if not endpoint.enabled:
                self._record(delivery, Decision("cancelled"), None, "endpoint_disabled", 0.0)
            elif endpoint.id in full:
                requeue.append((delivery.id, DEFER_S))
            elif (token := self.slots.acquire(endpoint.id)) is None:
                full.add(endpoint.id)
                requeue.append((delivery.id, DEFER_S))
            else:
                admitted.append((delivery, endpoint, token))
        futures = [self.executor.submit(self._attempt, *item) for item in admitted]
        for (delivery, _, _), future in zip(admitted, futures, strict=True):
            delay = future.result()
            if delay is not None and delay <= COUNTDOWN_MAX_S:
                requeue.append((delivery.id, delay))
        return requeue

    def _attempt(
        self, delivery: WebhookDelivery, endpoint: WebhookEndpoint, token: str
    ) -> float | None:
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
        finally:
            self.slots.release(endpoint.id, token)
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
