"""Webhook coordination in Redis: a fleet-wide cap on deliveries in flight per endpoint, and
a claim so that one delivery is handled by one task at a time.

Each slot is a member of a sorted set scored by when it lapses, so a process that dies
holding one frees it after ``lease_s``; the check and the take are one Lua script.
"""

from __future__ import annotations

import time
import uuid

import redis

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


class EndpointSlots:
    """At most ``cap`` deliveries in flight per endpoint, across every worker process."""

    def __init__(self, client: redis.Redis, *, cap: int, lease_s: float) -> None:
        self._redis = client
        self._cap = cap
        self._lease_s = lease_s
        self._acquire = client.register_script(_ACQUIRE)

    @staticmethod
    def key(endpoint_id: str) -> str:
        return f"orders:webhook-slots:{endpoint_id}"

    def acquire(self, endpoint_id: str) -> str | None:
        """A slot token, or None when the endpoint has ``cap`` deliveries in flight."""
        token = uuid.uuid4().hex
        now = time.time()
        taken = self._acquire(
            keys=[self.key(endpoint_id)],
            args=[now, now + self._lease_s, self._cap, token, int(self._lease_s * 1000) + 1000],
        )
        return token if taken else None

    def release(self, endpoint_id: str, token: str) -> None:
        """Give the slot back (idempotent)."""
        self._redis.zrem(self.key(endpoint_id), token)


class DeliveryClaims:
    """Which task is handling a delivery: one at a time, whoever enqueued it (the process
    task, a countdown retry, the sweeper). A claim lapses after ``lease_s`` if its holder died.
    """

    def __init__(self, client: redis.Redis, *, lease_s: float) -> None:
        self._redis = client
        self._lease_ms = int(lease_s * 1000)

    @staticmethod
    def key(delivery_id: str) -> str:
        return f"orders:webhook-claim:{delivery_id}"

    def claim(self, delivery_ids: list[str]) -> list[str]:
        """The ids now claimed by us (the others are being handled elsewhere)."""
        token = uuid.uuid4().hex
        with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.set(self.key(delivery_id), token, nx=True, px=self._lease_ms)
            taken = pipe.execute()
        return [d for d, ok in zip(delivery_ids, taken, strict=True) if ok]

    def release(self, delivery_ids: list[str]) -> None:
        """Let other tasks handle these deliveries again."""
        if delivery_ids:
            self._redis.delete(*(self.key(d) for d in delivery_ids))
