"""What the overview reads from Redis: broker queue lengths, the sweep's liveness, the
upstream's flow-control state. Never raises: an unreachable Redis is shown, not thrown."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from worker.flow.setup import build_store
from worker.flow.view import snapshot
from worker.queue.app import LAST_SWEEP_KEY, QUEUE_ORDERS, QUEUE_WEBHOOKS
from worker.redis_client import redis_client
from worker.settings import Settings
from worker.upstream.shared import token_key


@dataclass(frozen=True, slots=True)
class BrokerState:
    """The broker as the overview shows it; ``error`` set when Redis did not answer."""

    queues: dict[str, int]
    last_sweep_age_s: float | None
    error: str | None = None

    def alive(self, sweep_interval_s: float) -> bool:
        """Beat scheduled a sweep and a worker ran it lately (``orders health``'s rule)."""
        age = self.last_sweep_age_s
        return age is not None and age <= sweep_interval_s * 3 + 30


def broker_state(redis_url: str) -> BrokerState:
    """Queue lengths and the age of the last sweep a worker ran."""
    client = redis_client(redis_url, profile="check")
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(QUEUE_ORDERS)
            pipe.llen(QUEUE_WEBHOOKS)
            pipe.get(LAST_SWEEP_KEY)
            orders, webhooks, last = pipe.execute()
    except redis.RedisError as exc:
        return BrokerState({}, None, error=type(exc).__name__)
    age = time.time() - float(last) if last else None
    return BrokerState({QUEUE_ORDERS: orders, QUEUE_WEBHOOKS: webhooks}, age)


def upstream_state(redis_url: str, settings: Settings) -> dict[str, Any] | None:
    """The fleet's upstream budget (calls in flight, learned limit, breaker) and how long the
    shared token has left; None when Redis cannot be read."""
    client = redis_client(redis_url, profile="check")
    try:
        snap = snapshot(build_store(settings, client))
        token_ttl_ms = int(client.pttl(token_key(settings)))
    except redis.RedisError:
        return None
    return {
        "in_flight": snap.in_flight,
        "limit": snap.limit,
        "ceiling": snap.ceiling,
        "breaker": snap.breaker,
        "paused_s": round(snap.paused_s, 1),
        "token_left_s": round(token_ttl_ms / 1000) if token_ttl_ms > 0 else None,
    }
