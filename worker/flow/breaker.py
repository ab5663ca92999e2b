"""The outage breaker, fleet-wide. Pure.

    closed ──(a streak of failures fleet-wide, a process tripped with no success anywhere,
              or most recent calls failing)──> open
    open ──(a probe of the same kind of call answered 2xx)──> half_open
    half_open ──(ramp_s without an outage)──> closed
    half_open ──(failures dominate again, at least min_failures of them)──> open

While open the fleet sends only probes (one per ``probe_interval_s``, fleet-wide): a preview of
an order that waits, which creates nothing upstream. Only a probe's 2xx half-opens it: a 404
from an endpoint the upstream does not have, or a success of a call admitted before the breaker
opened (an older ``epoch``), says nothing about whether the upstream is back.
The volume threshold keeps one order's own repeated 502s (a payload problem) from opening it:
those come one per backoff, far fewer than ``min_failures`` while others succeed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from worker.flow.window import Totals


class Mode(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    half_life_s: float = 1.0
    min_failures: int = 20
    failure_share: float = 0.5
    streak: int = 8
    """Failures in a row fleet-wide (no success reported in between) that open it at once."""
    probe_interval_s: float = 1.0
    ramp_s: float = 3.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    mode: Mode = Mode.CLOSED
    since: float = 0.0
    epoch: int = 0
    """Bumped each time it opens: results of calls admitted under an older epoch don't count."""
    at: float = 0.0
    """When ``ok`` and ``failed`` (decayed counts) were last brought up to date."""
    ok: float = 0.0
    failed: float = 0.0


def _failing(ok: float, failed: float, cfg: BreakerConfig) -> bool:
    return failed >= cfg.min_failures and failed >= cfg.failure_share * (ok + failed)


def next_breaker(
    state: BreakerState, totals: Totals, now: float, cfg: BreakerConfig
) -> BreakerState:
    """The breaker after the fleet's ``totals`` of one interval, at ``now``."""
    decay = 0.5 ** (max(0.0, now - state.at) / cfg.half_life_s)
    ok = state.ok * decay + totals.ok
    failed = state.failed * decay + totals.failures
    state = replace(state, at=now, ok=ok, failed=failed)
    fresh = replace(state, ok=0.0, failed=0.0, since=now)
    # A process that stopped after a run of failures, while nobody in the fleet succeeded.
    tripped = totals.trips > 0 and totals.ok == 0
    if state.mode is Mode.CLOSED:
        if tripped or totals.streak >= cfg.streak or _failing(ok, failed, cfg):
            return replace(fresh, mode=Mode.OPEN, epoch=state.epoch + 1)
        return state
    if state.mode is Mode.OPEN:
        return replace(fresh, mode=Mode.HALF_OPEN) if totals.probe_ok else state
    # Half-open reopens on volume and share only, not on a streak or a trip: the probe proved
    # the upstream answers, so a run of failures may well be orders' own payloads.
    if _failing(ok, failed, cfg):
        return replace(fresh, mode=Mode.OPEN, epoch=state.epoch + 1)
    if now - state.since >= cfg.ramp_s:
        return replace(fresh, mode=Mode.CLOSED)
    return state
