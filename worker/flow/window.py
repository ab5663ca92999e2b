"""What one process saw over a short window of upstream calls, and how a call is counted. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from worker.errors import AmbiguousError, UpstreamError

# The longest pause a Retry-After may impose on the fleet (absurd values are clamped to it).
MAX_PAUSE_S = 24 * 3600.0


class Signal(StrEnum):
    """What one call's result says about the upstream (not about the order)."""

    OK = "ok"
    """An answer from a working upstream: 2xx, or a definite 4xx about the request."""
    DROPPED = "dropped"
    """Overload: 429, 503. The learned limit shrinks; the order did nothing wrong."""
    SLOW = "slow"
    """A timeout: overload or an outage; shrinks the limit and counts as a failure."""
    FAILED = "failed"
    """Other 5xx, connect errors, disconnects: maybe an outage (the breaker decides)."""


def signal_of(error: UpstreamError | None) -> Signal:
    """Classify one call's result by status code and error data, never by message."""
    if error is None:
        return Signal.OK
    code = error.status_code
    if code in (429, 503):
        return Signal.DROPPED
    if "timeout" in error.reason:
        return Signal.SLOW
    if code is None or code >= 500 or isinstance(error, AmbiguousError):
        return Signal.FAILED
    return Signal.OK


def clamp_retry_after_s(value: float | None) -> float | None:
    """A usable pause from a ``Retry-After``: finite, >= 0, at most ``MAX_PAUSE_S``."""
    if value is None or math.isnan(value):
        return None
    return min(max(0.0, value), MAX_PAUSE_S)


@dataclass(frozen=True, slots=True)
class Window:
    """Counts of one process's calls since its last report.

    ``refused_at`` is the lowest fleet position (permits held, this one included, when the
    permit was granted) of a dropped call: the upstream refused at that concurrency.
    """

    ok: int = 0
    dropped: int = 0
    slow: int = 0
    failed: int = 0
    latency_sum_s: float = 0.0
    refused_at: int = 0
    peak_in_flight: int = 0
    retry_after_s: float | None = None
    wait_s: float = 0.0

    @property
    def calls(self) -> int:
        return self.ok + self.dropped + self.slow + self.failed

    @property
    def mean_latency_s(self) -> float | None:
        return self.latency_sum_s / self.ok if self.ok else None

    def add(
        self, signal: Signal, *, latency_s: float, position: int, retry_after_s: float | None
    ) -> Window:
        """This window with one more call."""
        w = replace(self, peak_in_flight=max(self.peak_in_flight, position))
        if signal is Signal.OK:
            return replace(w, ok=w.ok + 1, latency_sum_s=w.latency_sum_s + latency_s)
        if signal is Signal.DROPPED:
            refused = position if not w.refused_at else min(w.refused_at, position)
            pause = clamp_retry_after_s(retry_after_s)
            if pause is not None and w.retry_after_s is not None:
                pause = max(pause, w.retry_after_s)
            return replace(w, dropped=w.dropped + 1, refused_at=refused, retry_after_s=pause)
        if signal is Signal.SLOW:
            return replace(w, slow=w.slow + 1)
        return replace(w, failed=w.failed + 1)
