"""Redis I/O of the call budget: permits, the shared state, fleet counters. Thin wrappers.

Permits are members of one sorted set scored by their expiry (ms): the acquire script drops
expired ones first, so a process that died holding permits frees them when they expire.
No library fits here: ``limits`` and ``pyrate-limiter`` count calls started (a rate), not calls
in flight with expiry, and two round trips per call would cost more than the call bookkeeping
itself; so one short Lua script grants up to ``want`` permits at once, under the learned limit,
the ceiling, a pause, the breaker (one probe per interval) and an optional rate (GCRA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from worker.flow.state import FlowConfig, FlowState, observe
from worker.flow.window import Window

# KEYS: permits, state, rate, probe.  ARGV: now_ms, ttl_ms, ceiling, want, id_prefix, rps,
# probe_interval_ms. Returns {granted, first_position, limit, wait_ms, code}; code 0 granted
# (or saturated), 1 paused, 2 breaker open and the probe slot taken, 3 rate-limited.
_ACQUIRE = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local st = redis.call('HMGET', KEYS[2], 'limit', 'paused_until', 'mode')
local ceiling = tonumber(ARGV[3])
local limit = math.max(1, math.floor(math.min(tonumber(st[1]) or ceiling, ceiling)))
local paused = (tonumber(st[2]) or 0) * 1000
if paused > now then return {0, 0, limit, math.ceil(paused - now), 1} end
local n = redis.call('ZCARD', KEYS[1])
local k = math.min(tonumber(ARGV[4]), limit - n)
if st[3] == 'open' then
  if k < 1 or redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[7]) == false then
    return {0, 0, limit, tonumber(ARGV[7]), 2}
  end
  k = 1
end
local rps = tonumber(ARGV[6])
if k > 0 and rps > 0 then
  local t = 1000 / rps
  local burst = math.max(t, 100)
  local tat = math.max(tonumber(redis.call('GET', KEYS[3]) or 0), now)
  local allowed = math.floor((now + burst - tat) / t)
  if allowed < 1 then return {0, 0, limit, math.ceil(tat + t - burst - now), 3} end
  k = math.min(k, allowed)
  redis.call('SET', KEYS[3], tat + k * t, 'PX', math.ceil(tat + k * t - now) + 1000)
end
if k < 0 then k = 0 end
for i = 1, k do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[5] .. i) end
return {k, n + 1, limit, 0, 0}
"""

_CAS = """
local v = redis.call('HGET', KEYS[1], 'version')
if (v or '0') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to one acquire: ``count`` permits named ``prefix + 1..count``."""

    count: int
    first_position: int
    limit: int
    wait_s: float
    code: int


def flow_prefix(digest: str) -> str:
    """Keys of one upstream (same digest as its token key)."""
    return f"orders:flow:{digest}"


class FlowStore:
    """The budget's keys in Redis, for one upstream."""

    def __init__(self, client: redis.Redis, prefix: str, cfg: FlowConfig) -> None:
        self.redis = client
        self.cfg = cfg
        self.permits_key = f"{prefix}:permits"
        self.state_key = f"{prefix}:state"
        self.stats_key = f"{prefix}:stats"
        self._rate_key = f"{prefix}:rate"
        self._probe_key = f"{prefix}:probe"
        self._acquire = client.register_script(_ACQUIRE)
        self._cas = client.register_script(_CAS)

    def acquire(self, want: int, *, prefix: str, ttl_s: float, now_s: float) -> Grant:
        """Grant up to ``want`` permits (ids ``prefix + 1..n``) expiring after ``ttl_s``."""
        args = [
            int(now_s * 1000),
            int(ttl_s * 1000),
            self.cfg.limit.ceiling,
            want,
            prefix,
            self.cfg.max_rps,
            int(self.cfg.breaker.probe_interval_s * 1000),
        ]
        keys = [self.permits_key, self.state_key, self._rate_key, self._probe_key]
        k, first, limit, wait_ms, code = (int(v) for v in self._acquire(keys=keys, args=args))
        return Grant(k, first, limit, wait_ms / 1000, code)

    def renew(self, ids: list[str], *, expires_at_s: float) -> None:
        """Push the expiry of permits still held (never re-adds one already gone)."""
        if ids:
            ms = int(expires_at_s * 1000)
            self.redis.zadd(self.permits_key, dict.fromkeys(ids, ms), xx=True)

    def release(self, ids: list[str]) -> None:
        if ids:
            self.redis.zrem(self.permits_key, *ids)

    def read(self) -> FlowState:
        return FlowState.from_fields(self.redis.hgetall(self.state_key), self.cfg)

    def report(self, window: Window, now_s: float | None = None) -> FlowState:
        """Apply ``window`` to the shared state (compare-and-set, retried on a race)."""
        self._count(window)
        for _ in range(10):
            state = self.read()
            new = observe(state, window, time.time() if now_s is None else now_s, self.cfg)
            args: list[Any] = [str(state.version)]
            for key, value in new.to_fields().items():
                args += [key, value]
            if self._cas(keys=[self.state_key], args=args):
                return new
        return self.read()

    def _count(self, window: Window) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for name in ("ok", "dropped", "slow", "failed"):
            if value := getattr(window, name):
                pipe.hincrby(self.stats_key, name, value)
        if window.wait_s:
            pipe.hincrbyfloat(self.stats_key, "wait_s", window.wait_s)
        pipe.execute()

    def in_flight(self, now_s: float | None = None) -> int:
        now_ms = int((time.time() if now_s is None else now_s) * 1000)
        return int(self.redis.zcount(self.permits_key, now_ms, "+inf"))

    def stats(self) -> dict[str, float]:
        raw = self.redis.hgetall(self.stats_key)
        return {k.decode(): float(v) for k, v in raw.items()}
