"""A fleet-wide cap on webhook deliveries in flight per endpoint, held in Redis.

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
