"""Redis I/O of the call budget: leases of permits, the fleet's totals, the shared state.

Each worker process holds a *lease*: an allotment of permits it hands out to its own threads
without asking Redis. One script (``sync``) renews the lease, adds the process's window of
results to the fleet's totals, and answers the allotment: a fair share (water-filling the
processes' demands) of the limit that the others do not hold. A process that dies stops
renewing, and its lease (with everything it held) expires after ``ttl``.
The controller's turn (``take``/``write``) goes to one process per interval.
All keys of one upstream share a hash tag (one Redis Cluster slot), and every time is the
Redis server's ``TIME``: no host clock ends up in a score.

No library fits here: ``limits`` and ``pyrate-limiter`` count calls started (a rate), not calls
in flight with expiry, and a round trip per call would cost more than the call bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from worker.flow.state import (
    LATENCY_CARRY_MAX,
    LATENCY_MIN_SAMPLES,
    FlowConfig,
    FlowState,
    decide,
    initial_state,
)
from worker.flow.window import Totals

_SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tag = ARGV[1]
local demand, in_use, peak = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, d in ipairs(dead) do redis.call('HDEL', KEYS[2], d) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), tag)
for i = 15, #ARGV, 2 do
  local name, v = ARGV[i], tonumber(ARGV[i + 1])
  if name == 'retry_after_s' then
    if v > tonumber(redis.call('HGET', KEYS[4], name) or '0') then
      redis.call('HSET', KEYS[4], name, v)
    end
  elseif name == 'wait_s' then
    redis.call('HINCRBYFLOAT', KEYS[5], name, v)
  else
    redis.call('HINCRBY', KEYS[4], name, v)
    if string.sub(name, 1, 1) ~= 'b' then redis.call('HINCRBY', KEYS[5], name, v) end
  end
end
local trailing = tonumber(ARGV[12])
if tonumber(ARGV[13]) == 1 then
  redis.call('HSET', KEYS[4], 'streak', trailing)
elseif trailing > 0 then
  redis.call('HINCRBY', KEYS[4], 'streak', trailing)
end
local st = redis.call('HMGET', KEYS[3], 'limit', 'mode', 'paused_until', 'epoch', 'target')
local ceiling = tonumber(ARGV[6])
local limit = math.max(1, math.min(tonumber(st[1]) or tonumber(ARGV[14]), ceiling))
local target = math.max(limit, math.min(tonumber(st[5]) or limit, ceiling))
local mode = st[2] or 'closed'
local paused_ms = math.ceil((tonumber(st[3]) or 0) * 1000 - now)
local procs = redis.call('HGETALL', KEYS[2])
local demands, held_others, peak_sum = {demand}, 0, peak
for i = 1, #procs, 2 do
  if procs[i] ~= tag then
    local d, h, p = string.match(procs[i + 1], '(%d+) (%d+) (%d+)')
    table.insert(demands, tonumber(d))
    held_others = held_others + tonumber(h)
    peak_sum = peak_sum + tonumber(p)
  end
end
local grant = 0
if mode ~= 'open' and paused_ms <= 0 then
  table.sort(demands)
  local left, n, level = limit, #demands, nil
  for i, d in ipairs(demands) do
    local share = left / (n - i + 1)
    if d > share then level = share break end
    left = left - d
  end
  local fair = demand
  -- Rounded up: whoever syncs last gets what the others left (the sum never passes limit).
  if level ~= nil then fair = math.min(demand, math.max(1, math.ceil(level))) end
  grant = math.max(0, math.min(fair, limit - held_others))
end
local tokens = -1
local rps = tonumber(ARGV[8])
if rps > 0 then
  tokens = 0
  local want = tonumber(ARGV[9])
  if want > 0 and grant > 0 then
    local step = 1000 / rps
    local burst = math.max(step, 100)
    local tat = math.max(tonumber(redis.call('GET', KEYS[7]) or 0), now)
    local allowed = math.floor((now + burst - tat) / step)
    if allowed > 0 then
      tokens = math.min(want, allowed)
      local tat2 = tat + tokens * step
      redis.call('SET', KEYS[7], tat2, 'PX', math.ceil(tat2 - now) + 1000)
    end
  end
end
local held = math.max(grant, in_use)
redis.call('HSET', KEYS[2], tag, demand .. ' ' .. held .. ' ' .. peak .. ' ' .. in_use)
if peak_sum > tonumber(redis.call('HGET', KEYS[4], 'peak_in_use') or '0') then
  redis.call('HSET', KEYS[4], 'peak_in_use', peak_sum)
end
local turn = 0
if redis.call('SET', KEYS[6], tag, 'NX', 'PX', ARGV[7]) then
  turn = 1
elseif tonumber(ARGV[10]) > 0 and redis.call('SET', KEYS[8], tag, 'NX', 'PX', ARGV[10]) then
  -- A refusal: the controller runs now, not at the interval's end (once per cooldown).
  turn = 1
end
return {now, grant, limit, mode, paused_ms, tonumber(st[4]) or 0, turn, tokens,
        held_others + held, target}
"""

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local totals = redis.call('HGETALL', KEYS[1])
local streak = redis.call('HGET', KEYS[1], 'streak')
local carry = tonumber(redis.call('HGET', KEYS[1], 'lat_carry') or '0')
local buckets, answers = {}, 0
for i = 1, #totals, 2 do
  if string.sub(totals[i], 1, 1) == 'b' then
    answers = answers + tonumber(totals[i + 1])
    buckets[#buckets + 1] = totals[i]
    buckets[#buckets + 1] = totals[i + 1]
  end
end
redis.call('DEL', KEYS[1])
if streak then redis.call('HSET', KEYS[1], 'streak', streak) end
redis.call('HSET', KEYS[1], 'started_ms', now)
if answers > 0 and answers < tonumber(ARGV[1]) and carry < tonumber(ARGV[2]) then
  -- Too few answers to judge: they count in the next interval's histogram too.
  redis.call('HSET', KEYS[1], 'lat_carry', carry + 1, unpack(buckets))
end
return {now, totals, redis.call('HGETALL', KEYS[2])}
"""

_WRITE = """
local v = redis.call('HGET', KEYS[1], 'version')
if (v or '0') ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] == '1' then redis.call('HDEL', KEYS[2], 'streak') end
return 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """The answer to one sync (times in Redis server seconds)."""

    now_s: float
    allot: int
    limit: int
    mode: str
    paused_s: float
    epoch: int
    turn: bool
    """This process holds the controller's turn for the next interval."""
    tokens: int
    """Calls it may start under the rate ceiling (-1: no rate ceiling)."""
    in_flight: int
    target: int


@dataclass(frozen=True, slots=True)
class Report:
    """What a process tells the fleet at a sync."""

    demand: int
    in_use: int
    peak: int
    trailing_failures: int = 0
    had_ok: bool = False
    fields: dict[str, float] | None = None
    want_tokens: int = 0
    urgent: bool = False
    """The window holds a refusal: the controller may run at once (once per cooldown)."""


def flow_prefix(digest: str) -> str:
    """Keys of one upstream (same digest as its token key), in one hash slot."""
    return f"orders:flow:{{{digest}}}"


class FlowStore:
    """The budget's keys in Redis, for one upstream."""

    def __init__(self, client: redis.Redis, prefix: str, cfg: FlowConfig) -> None:
        self.redis = client
        self.cfg = cfg
        self.leases_key = f"{prefix}:leases"
        self.procs_key = f"{prefix}:procs"
        self.state_key = f"{prefix}:state"
        self.totals_key = f"{prefix}:totals"
        self.stats_key = f"{prefix}:stats"
        self.turn_key = f"{prefix}:turn"
        self._rate_key = f"{prefix}:rate"
        self._probe_key = f"{prefix}:probe"
        self._urgent_key = f"{prefix}:urgent"
        self._sync = client.register_script(_SYNC)
        self._take = client.register_script(_TAKE)
        self._write = client.register_script(_WRITE)

    def sync(self, tag: str, report: Report, *, ttl_s: float) -> Lease:
        """Renew this process's lease, add its window to the totals, get its allotment."""
        cfg = self.cfg
        args: list[Any] = [
            tag,
            report.demand,
            report.in_use,
            report.peak,
            int(ttl_s * 1000),
            cfg.ceiling,
            int(cfg.interval_s * 1000),
            cfg.max_rps,
            report.want_tokens,
            int(cfg.loss.cooldown_s * 1000) if report.urgent else 0,
            0,
            report.trailing_failures,
            1 if report.had_ok else 0,
            cfg.loss.initial,
        ]
        for name, value in (report.fields or {}).items():
            args += [name, value]
        keys = [
            self.leases_key,
            self.procs_key,
            self.state_key,
            self.totals_key,
            self.stats_key,
            self.turn_key,
            self._rate_key,
            self._urgent_key,
        ]
        r = self._sync(keys=keys, args=args)
        mode = r[3].decode() if isinstance(r[3], bytes) else str(r[3])
        return Lease(
            now_s=int(r[0]) / 1000,
            allot=int(r[1]),
            limit=int(r[2]),
            mode=mode,
            paused_s=max(0.0, int(r[4]) / 1000),
            epoch=int(r[5]),
            turn=bool(int(r[6])),
            tokens=int(r[7]),
            in_flight=int(r[8]),
            target=int(r[9]),
        )

    def claim_probe(self, tag: str) -> bool:
        """The fleet's probe slot for the next ``probe_interval_s`` (one probe at a time)."""
        ms = int(self.cfg.breaker.probe_interval_s * 1000)
        return bool(self.redis.set(self._probe_key, tag, nx=True, px=ms))

    def control(self) -> FlowState | None:
        """Take the interval's totals and move the shared state (the controller's turn).

        Returns the new state, or None when another process changed it meanwhile.
        """
        now_ms, totals_raw, state_raw = self._take(
            keys=[self.totals_key, self.state_key],
            args=[LATENCY_MIN_SAMPLES, LATENCY_CARRY_MAX],
        )
        state = FlowState.from_fields(_pairs(state_raw), self.cfg)
        totals = Totals.from_fields(_pairs(totals_raw))
        new = decide(state, totals, int(now_ms) / 1000, self.cfg)
        reset = "1" if new.breaker.mode is not state.breaker.mode else "0"
        args: list[Any] = [str(state.version), reset]
        for key, value in new.to_fields().items():
            args += [key, value]
        written = self._write(keys=[self.state_key, self.totals_key], args=args)
        return new if written else None

    def read(self) -> FlowState:
        raw = self.redis.hgetall(self.state_key)
        return FlowState.from_fields(_pairs_dict(raw), self.cfg) if raw else initial_state(self.cfg)

    def write(self, state: FlowState) -> None:
        """Replace the shared state (operators and tests)."""
        fields: dict[FieldT, EncodableT] = dict(state.to_fields().items())
        self.redis.hset(self.state_key, mapping=fields)

    def now_s(self) -> float:
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    def in_flight(self, *, leased: bool = False) -> int:
        """Calls in flight in live processes as of their last sync (``leased``: the permits
        their leases hold, which include the ones not in use)."""
        now_ms = int(self.now_s() * 1000)
        live = {_s(m) for m in self.redis.zrangebyscore(self.leases_key, now_ms, "+inf")}
        total = 0
        for tag, value in self.redis.hgetall(self.procs_key).items():
            if _s(tag) in live:
                total += int(_s(value).split()[1 if leased else 3])
        return total

    def stats(self) -> dict[str, float]:
        raw = self.redis.hgetall(self.stats_key)
        return {_s(k): float(v) for k, v in raw.items()}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _pairs_dict(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}
