"""The outage breaker, fleet-wide. Pure.

    closed ──(most calls of a short window fail, enough of them)──> open
    open ──(a probe succeeds)──> half_open ──(ramp_s without an outage)──> closed
    half_open ──(failures dominate again)──> open

While open the fleet sends only probes (one per ``probe_interval_s``, fleet-wide). The volume
threshold keeps one order's own repeated 502s (a payload problem) from opening it: those come
one per backoff, far fewer than ``min_failures`` in a window while others succeed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from worker.flow.window import Window


class Mode(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window_s: float = 5.0
    min_failures: int = 20
    failure_share: float = 0.5
    probe_interval_s: float = 1.0
    ramp_s: float = 5.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    mode: Mode = Mode.CLOSED
    since: float = 0.0
    window_start: float = 0.0
    ok: int = 0
    failed: int = 0


def _failing(ok: int, failed: int, cfg: BreakerConfig, min_failures: int) -> bool:
    return failed >= min_failures and failed >= cfg.failure_share * (ok + failed)


def next_breaker(
    state: BreakerState, window: Window, now: float, cfg: BreakerConfig
) -> BreakerState:
    """The breaker after ``window`` was observed at ``now``."""
    failed = window.failed + window.slow
    if now - state.window_start >= cfg.window_s:
        state = replace(state, window_start=now, ok=0, failed=0)
    state = replace(state, ok=state.ok + window.ok, failed=state.failed + failed)
    fresh = replace(state, window_start=now, ok=0, failed=0, since=now)
    if state.mode is Mode.CLOSED:
        if _failing(state.ok, state.failed, cfg, cfg.min_failures):
            return replace(fresh, mode=Mode.OPEN)
        return state
    if state.mode is Mode.OPEN:
        # A probe that answered: the upstream is back, at least for one call.
        return replace(fresh, mode=Mode.HALF_OPEN) if window.ok else state
    if _failing(state.ok, state.failed, cfg, 1):
        return replace(fresh, mode=Mode.OPEN)
    if now - state.since >= cfg.ramp_s:
        return replace(fresh, mode=Mode.CLOSED)
    return state
