"""The loss rule: how many calls in flight the upstream takes before it refuses. Pure.

CUBIC applied to concurrency (the curve TCP CUBIC and the AWS SDKs' adaptive retry mode use):
a burst of refusals (429, 503) or timeouts cuts the limit to ``beta`` times the level that was
refused; one or two (the top of a cycle just past the capacity, where a deep cut only leaves
the upstream idle) take the limit to the level less the calls refused, the capacity they show;
the limit then climbs back along a cubic curve that is steep far below that level, flat near it
(so the fleet spends most of its time just under the capacity) and steep again past it (so a
capacity that grew is found). With capacity C the limit averages close to C, with refusals only
at the top of each cycle. Before the first refusal the limit doubles every interval (slow start)
while the fleet uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class LossConfig:
    ceiling: int
    min_limit: int = 1
    initial: int = 32
    beta: float = 0.7
    soft_share: float = 0.1
    """Refusals up to this share of the refused level (two at least) are the top of a cycle:
    the limit goes to the level less the calls refused (the capacity they show), not to
    ``beta`` of it. Counted against the level, not the interval's calls, because the
    controller runs at once on a refusal, on a window that may hold a handful of calls."""
    scale: float = 0.4
    """CUBIC's C: calls per s**3. With beta 0.7 the curve is back at a level of 16 in ~2.3 s."""
    cooldown_s: float = 0.4
    """After a cut, losses of calls started under the old limit are not a new overload."""


@dataclass(frozen=True, slots=True)
class LossState:
    limit: float
    w_max: float = 0.0
    """The level of the last refusal (0: never refused)."""
    cut_at: float = 0.0


def initial_loss(cfg: LossConfig) -> LossState:
    return LossState(limit=float(min(cfg.ceiling, cfg.initial)))


def cubic_s(w_max: float, cfg: LossConfig) -> float:
    """Seconds after a cut at which the curve is back at ``w_max`` (CUBIC's K)."""
    k_s: float = (w_max * (1 - cfg.beta) / cfg.scale) ** (1 / 3)
    return k_s


def next_loss(
    state: LossState,
    *,
    losses: int,
    in_flight: int,
    busy: bool,
    now: float,
    cfg: LossConfig,
) -> LossState:
    """The loss limit after an interval with ``losses`` refusals or timeouts.

    Args:
        in_flight: The fleet's peak calls in flight during the interval.
        busy: Whether the fleet used most of its limit (no growth when it did not).
    """
    ceiling = float(cfg.ceiling)
    limit = min(state.limit, ceiling)
    if losses and now - state.cut_at >= cfg.cooldown_s:
        # Refused with this many in flight: the capacity is below it, whatever the limit.
        level = max(float(cfg.min_limit), min(limit, float(in_flight) if in_flight else limit))
        soft = losses <= max(2.0, cfg.soft_share * level)
        # A burst: the capacity is well below, or it fell. One or two at the top of a cycle:
        # the level less those is what the upstream took (a cut to 0.85 of the level left
        # one or two of 16 slots idle for a second of each 2.6 s cycle, row d).
        cut = max(float(cfg.min_limit), level - losses if soft else level * cfg.beta)
        return LossState(limit=cut, w_max=level, cut_at=now)
    if losses:
        return replace(state, limit=limit)
    if not state.w_max:
        grown = limit * 2 if busy else limit
        return replace(state, limit=min(ceiling, grown))
    t = now - state.cut_at
    curve = cfg.scale * (t - cubic_s(state.w_max, cfg)) ** 3 + state.w_max
    if not busy:
        # Nobody is using the room: don't climb past what was refused on faith alone, and
        # stop the curve's clock where the limit is (CUBIC after an application-limited
        # period): a fleet back from an outage or an idle spell resumes the curve from there,
        # not from far along it (it went to the ceiling at once and met the capacity with
        # a burst of refusals).
        level = max(float(cfg.min_limit), min(ceiling, max(limit, min(curve, state.w_max))))
        return replace(state, limit=level, cut_at=now - curve_time_s(level, state.w_max, cfg))
    return replace(state, limit=max(float(cfg.min_limit), min(ceiling, max(limit, curve))))


def curve_time_s(level: float, w_max: float, cfg: LossConfig) -> float:
    """Seconds after a cut at which the curve reaches ``level`` (the inverse of the curve)."""
    x = (level - w_max) / cfg.scale
    return cubic_s(w_max, cfg) + math.copysign(abs(x) ** (1 / 3), x)


def restart(state: LossState, *, now: float, cfg: LossConfig) -> LossState:
    """The loss limit after an idle spell (nobody used it: it is not known to be safe, the
    idea of RFC 7661). A limit that never met a refusal comes back to the slow start; one
    that grew past the level last refused comes back to that level, on the curve's plateau
    (it grew there on faith: a warm-up against a fast upstream took it from 32 to 433, and
    the first interval against the same capacity at 50 ms refused 184 calls)."""
    if not state.w_max:
        return replace(state, limit=min(state.limit, initial_loss(cfg).limit))
    if state.limit <= state.w_max:
        return state
    return LossState(limit=state.w_max, w_max=state.w_max, cut_at=now - cubic_s(state.w_max, cfg))
