"""Sending webhook deliveries: signed per Standard Webhooks, retried on their own schedule.

A delivery's fate never touches the order: webhooks are a side channel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import httpx
import orjson
from sqlalchemy import insert, select, update
from standardwebhooks.webhooks import Webhook

from worker.db import transaction
from worker.ids import utcnow
from worker.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from worker.upstream.classify import parse_retry_after
from worker.webhooks.targets import TargetRefused, TargetUnresolved, check_target

# Seconds to wait before attempt n+1 after attempt n failed (like Svix: up to ~28 h in all).
SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
COUNTDOWN_MAX_S = 30.0


def next_delay_s(attempts: int, max_attempts: int, retry_after_s: float | None) -> float | None:
    """Delay before the next attempt after ``attempts`` failed ones; None: give up. Pure."""
    if attempts >= max_attempts:
        return None
    delay = SCHEDULE_S[min(attempts - 1, len(SCHEDULE_S) - 1)]
    return max(delay, retry_after_s or 0.0)


def sign_headers(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
    }


def deliver(
    delivery_ids: Sequence[str],
    db_url: str,
    client: httpx.Client,
    allow_private: bool,
    max_attempts: int,
) -> list[tuple[str, float]]:
    """Attempt each pending delivery once; returns ``(id, countdown)`` for short retries."""
    requeue: list[tuple[str, float]] = []
    for delivery_id in delivery_ids:
        with transaction(db_url) as session:
            row = session.execute(
                select(WebhookDelivery, WebhookEndpoint)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(WebhookDelivery.id == delivery_id)
            ).first()
        if row is None or row[0].status != "pending":
            continue
        delivery, endpoint = row
        if not endpoint.enabled:
            _finish(db_url, delivery, "cancelled", None, None, 0.0, "endpoint disabled", None)
            continue
        body = orjson.dumps(delivery.payload).decode()
        status_code: int | None = None
        error: str | None = None
        retry_after_s: float | None = None
        permanent = False
        started = time.perf_counter()
        try:
            check_target(endpoint.url, allow_private)
            headers = sign_headers(endpoint.secret, delivery.id, utcnow(), body)
            started = time.perf_counter()
            # Streamed and left unread: a receiver's answer body is never loaded into memory.
            with client.stream("POST", endpoint.url, content=body, headers=headers) as response:
                status_code = response.status_code
                retry_after_s = parse_retry_after(response.headers.get("retry-after"))
        except TargetUnresolved as exc:
            error = f"target unresolved: {exc}"
        except TargetRefused as exc:
            error, permanent = f"target refused: {exc}", True
        except httpx.InvalidURL as exc:
            error, permanent = f"invalid url: {exc}", True
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        latency_ms = (time.perf_counter() - started) * 1000
        attempts = delivery.attempts + 1
        if status_code is not None and 200 <= status_code < 300:
            outcome, delay = "delivered", None
        elif status_code == 410 or permanent:
            outcome, delay = "failed", None
        else:
            delay = next_delay_s(attempts, max_attempts, retry_after_s)
            outcome = "pending" if delay is not None else "failed"
        disable = "receiver answered 410 Gone" if status_code == 410 else None
        _finish(
            db_url,
            delivery,
            outcome,
            status_code,
            error,
            latency_ms,
            None,
            delay,
            disable_endpoint=disable,
        )
        if delay is not None and delay <= COUNTDOWN_MAX_S:
            requeue.append((delivery.id, delay))
    return requeue


def _finish(
    db_url: str,
    delivery: WebhookDelivery,
    outcome: str,
    status_code: int | None,
    error: str | None,
    latency_ms: float,
    note: str | None,
    delay_s: float | None,
    disable_endpoint: str | None = None,
) -> None:
    now = utcnow()
    due = now + timedelta(seconds=delay_s) if delay_s is not None else None
    with transaction(db_url) as session:
        session.execute(
            insert(WebhookAttempt).values(
                delivery_id=delivery.id,
                at=now,
                status_code=status_code,
                latency_ms=latency_ms,
                error=error or note,
            )
        )
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id)
            .values(
                status=outcome,
                attempts=WebhookDelivery.attempts + 1,
                due_at=due,
                last_status_code=status_code,
                last_error=error or note,
                updated_at=now,
            )
        )
        if disable_endpoint:
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == delivery.endpoint_id)
                .values(enabled=False, disabled_reason=disable_endpoint)
            )
