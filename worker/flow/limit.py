"""The learned concurrency limit, below the configured ceiling: AIMD. Pure.

Shrinks when the upstream drops calls (429, 503, timeouts) or when latency rises well above its
floor (requests queueing upstream); grows while calls succeed near the latency floor and the
fleet actually uses the limit. At most one change per ``interval_s``: answers to calls started
under the old limit are still arriving, and must not shrink it twice for one overload.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from worker.flow.window import Window


@dataclass(frozen=True, slots=True)
class LimitConfig:
    ceiling: int
    min_limit: int = 1
    backoff: float = 0.9
    interval_s: float = 0.25
    # Beyond the level of the last drop, grow by one only this often: a probe past the
    # capacity costs refusals and, with a Retry-After, a pause of the whole fleet.
    probe_interval_s: float = 10.0
    # A fresh fleet starts here and doubles while the upstream keeps up (slow start): the first
    # burst against an upstream of unknown capacity refuses tens of calls, not hundreds.
    initial: int = 32
    # Mean latency above floor x this: the upstream is queueing our calls.
    queueing_ratio: float = 2.0
    # Mean latency below floor x this: room to grow.
    near_floor_ratio: float = 1.5
    # The floor creeps up by this share per change, so a lasting slowdown becomes the new floor.
    floor_drift: float = 0.01


@dataclass(frozen=True, slots=True)
class LimitState:
    limit: float
    changed_at: float = 0.0
    floor_s: float = 0.0
    dropped_at_limit: float = 0.0
    """The concurrency the upstream last refused (0: never); growth beyond it is cautious."""


def initial_limit(cfg: LimitConfig) -> LimitState:
    """Start low and double quickly (see ``LimitConfig.initial``)."""
    return LimitState(limit=float(min(cfg.ceiling, cfg.initial)))


def next_limit(state: LimitState, window: Window, now: float, cfg: LimitConfig) -> LimitState:
    """The limit after ``window`` was observed at ``now``."""
    mean_s = window.mean_latency_s
    floor_s = state.floor_s
    if mean_s is not None:
        floor_s = mean_s if floor_s <= 0 else min(mean_s, floor_s * (1 + cfg.floor_drift))
    limit = min(state.limit, float(cfg.ceiling))
    base = replace(state, floor_s=floor_s, limit=limit)
    since_s = now - state.changed_at
    # Refused at a concurrency the limit still allows: act now, whatever the interval.
    above_refusal = bool(window.refused_at) and limit > window.refused_at - 1
    if since_s < cfg.interval_s and not above_refusal:
        return base
    if window.dropped or window.slow:
        new = limit * cfg.backoff
        if window.refused_at:
            # Refused with this many in flight: the capacity is below it, whatever the limit.
            new = min(new, window.refused_at - 1)
        new = max(float(cfg.min_limit), new)
        # Remember the level that was refused (not a slow-start overshoot): regrowth aims below it.
        refused = min(limit, float(window.refused_at)) if window.refused_at else limit
        return replace(base, limit=new, changed_at=now, dropped_at_limit=refused)
    if mean_s is None:
        return base
    if floor_s > 0 and mean_s > floor_s * cfg.queueing_ratio:
        new = max(float(cfg.min_limit), limit * cfg.backoff)
        return replace(base, limit=new, changed_at=now)
    busy = window.peak_in_flight >= limit / 2
    if busy and mean_s <= floor_s * cfg.near_floor_ratio and limit < cfg.ceiling:
        below_drop = limit < state.dropped_at_limit * cfg.backoff
        if not state.dropped_at_limit:
            new = limit * 2
        elif below_drop:
            # Back towards the level that worked before the last drop: quickly.
            new = min(limit * 1.25 + 1, state.dropped_at_limit * cfg.backoff)
        elif since_s >= cfg.probe_interval_s:
            new = limit + 1
        else:
            return base
        return replace(base, limit=min(float(cfg.ceiling), new), changed_at=now)
    return base
