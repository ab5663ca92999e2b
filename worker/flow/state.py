"""The fleet's shared view of the upstream, and how one process's window moves it. Pure.

Stored in one Redis hash (see ``store.py``) and changed by compare-and-set on ``version``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from worker.flow.breaker import BreakerConfig, BreakerState, Mode, next_breaker
from worker.flow.limit import LimitConfig, LimitState, initial_limit, next_limit
from worker.flow.window import Window

# Where the limit restarts when the breaker lets probes through again: no stampede.
RAMP_START = 2.0


@dataclass(frozen=True, slots=True)
class FlowConfig:
    limit: LimitConfig
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    max_rps: float = 0.0


@dataclass(frozen=True, slots=True)
class FlowState:
    limit: LimitState
    breaker: BreakerState = field(default_factory=BreakerState)
    paused_until: float = 0.0
    version: int = 0

    @property
    def effective_limit(self) -> int:
        return max(1, int(self.limit.limit))

    def to_fields(self) -> dict[str, str]:
        """The Redis hash fields (strings)."""
        lim, br = self.limit, self.breaker
        return {
            "limit": repr(lim.limit),
            "changed_at": repr(lim.changed_at),
            "floor_s": repr(lim.floor_s),
            "dropped_at_limit": repr(lim.dropped_at_limit),
            "mode": str(br.mode),
            "since": repr(br.since),
            "window_start": repr(br.window_start),
            "ok": repr(br.ok),
            "failed": repr(br.failed),
            "streak": str(br.streak),
            "paused_until": repr(self.paused_until),
            "version": str(self.version),
        }

    @classmethod
    def from_fields(cls, raw: dict[str, Any], cfg: FlowConfig) -> FlowState:
        """Parse the hash; an empty or damaged hash is the initial state."""
        f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
        try:
            lim = LimitState(
                float(f["limit"]),
                float(f["changed_at"]),
                float(f["floor_s"]),
                float(f["dropped_at_limit"]),
            )
            br = BreakerState(
                Mode(_s(f["mode"])),
                float(f["since"]),
                float(f["window_start"]),
                float(f["ok"]),
                float(f["failed"]),
                int(f["streak"]),
            )
            return cls(lim, br, float(f["paused_until"]), int(f["version"]))
        except (KeyError, ValueError):
            return cls(initial_limit(cfg.limit), version=int(f.get("version") or 0))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def observe(state: FlowState, window: Window, now: float, cfg: FlowConfig) -> FlowState:
    """The shared state after one process reports ``window`` at ``now``."""
    paused_until = state.paused_until
    if window.retry_after_s:
        # The upstream asked everyone to wait, not only the call it answered.
        paused_until = max(paused_until, now + window.retry_after_s)
    breaker = next_breaker(state.breaker, window, now, cfg.breaker)
    limit = state.limit
    if breaker.mode is Mode.HALF_OPEN and state.breaker.mode is Mode.OPEN:
        before = max(limit.limit, limit.dropped_at_limit)
        start = min(RAMP_START, float(cfg.limit.ceiling))
        limit = replace(limit, limit=start, changed_at=now, dropped_at_limit=before)
    elif breaker.mode is not Mode.OPEN:
        limit = next_limit(limit, window, now, cfg.limit)
    return FlowState(limit, breaker, paused_until, state.version + 1)


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a call may start: ``go``, ``wait`` (``wait_s``), or ``probe`` only."""

    kind: str
    wait_s: float = 0.0


def admission(state: FlowState, now: float) -> Admission:
    """What the shared state allows a new call at ``now``."""
    if state.paused_until > now:
        return Admission("wait", state.paused_until - now)
    if state.breaker.mode is Mode.OPEN:
        return Admission("probe")
    return Admission("go")
