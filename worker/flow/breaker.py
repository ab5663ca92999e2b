"""The outage breaker, fleet-wide. Pure.

    closed ──(most recent calls fail, or 20 in a row fleet-wide, enough of them)──> open
    open ──(a probe succeeds)──> half_open ──(ramp_s without an outage)──> closed
    half_open ──(failures dominate again, as many as opened it)──> open

While open the fleet sends only probes (one per ``probe_interval_s``, fleet-wide). The volume
threshold keeps one order's own repeated 502s (a payload problem) from opening it: those come
one per backoff, far fewer than ``min_failures`` in a window while others succeed.
Counts decay with a half-life of ``half_life_s`` (not a tumbling window), and a streak of
``min_failures`` failures with no success in between opens it at once: an outage right after a
busy, healthy second costs tens of calls, not hundreds.
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
    half_life_s: float = 1.0
    min_failures: int = 20
    failure_share: float = 0.5
    probe_interval_s: float = 1.0
    ramp_s: float = 5.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    mode: Mode = Mode.CLOSED
    since: float = 0.0
    window_start: float = 0.0
    """When ``ok`` and ``failed`` (decayed counts) were last brought up to date."""
    ok: float = 0.0
    failed: float = 0.0
    streak: int = 0
    """Failures reported since the last report with a success."""


def _failing(ok: float, failed: float, cfg: BreakerConfig, min_failures: int) -> bool:
    return failed >= min_failures and failed >= cfg.failure_share * (ok + failed)


def next_breaker(
    state: BreakerState, window: Window, now: float, cfg: BreakerConfig
) -> BreakerState:
    """The breaker after ``window`` was observed at ``now``."""
    failed = window.failed + window.slow
    decay = 0.5 ** (max(0.0, now - state.window_start) / cfg.half_life_s)
    ok = state.ok * decay + window.ok
    streak = failed if window.ok else state.streak + failed
    state = replace(
        state, window_start=now, ok=ok, failed=state.failed * decay + failed, streak=streak
    )
    fresh = replace(state, window_start=now, ok=0.0, failed=0.0, streak=0, since=now)
    if state.mode is Mode.CLOSED:
        in_a_row = state.streak >= cfg.min_failures
        if in_a_row or _failing(state.ok, state.failed, cfg, cfg.min_failures):
            return replace(fresh, mode=Mode.OPEN)
        return state
    if state.mode is Mode.OPEN:
        # A probe that answered: the upstream is back, at least for one call.
        return replace(fresh, mode=Mode.HALF_OPEN) if window.ok else state
    # Half-open reopens on the same evidence that opened it, not on one failure: the probe
    # proved the upstream answers, so a few failures may well be orders' own payloads.
    if _failing(state.ok, state.failed, cfg, cfg.min_failures):
        return replace(fresh, mode=Mode.OPEN)
    if now - state.since >= cfg.ramp_s:
        return replace(fresh, mode=Mode.CLOSED)
    return state
