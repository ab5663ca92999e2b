"""What calls said about the upstream: one process's window, the fleet's totals. Pure.

A process counts its calls in a :class:`Window` between two syncs with Redis; the sync script
adds the window to the fleet's :class:`Totals`, which the controller reads once per interval.
Latency is time-to-answer of successful calls (httpx's ``response.elapsed``), kept as a
histogram with logarithmic buckets so the fleet's percentiles can be added up across processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from worker.errors import AmbiguousError, UpstreamError

# The longest pause a Retry-After may impose on the fleet: minutes, not a day (an absurd or
# hostile value would otherwise stop every worker for as long as it says).
MAX_PAUSE_S = 300.0

# Latency buckets: bucket i holds latencies in [BASE_S * RATIO**i, BASE_S * RATIO**(i+1)).
BUCKET_BASE_S = 0.0005
BUCKET_RATIO = 1.1
BUCKETS = 120  # 0.5 ms ... ~46 s


class Signal(StrEnum):
    """What one call's result says about the upstream (not about the order)."""

    OK = "ok"
    """An answer from a working upstream: 2xx, or a definite 4xx about the request."""
    DROPPED = "dropped"
    """Overload: 429, 503. The loss rule cuts the limit; the order did nothing wrong."""
    SLOW = "slow"
    """A timeout: overload or an outage; a loss, and a failure for the breaker."""
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


def bucket_of(latency_s: float) -> int:
    if latency_s <= BUCKET_BASE_S:
        return 0
    return min(BUCKETS - 1, int(math.log(latency_s / BUCKET_BASE_S, BUCKET_RATIO)))


def bucket_mid_s(index: int) -> float:
    mid_s: float = BUCKET_BASE_S * BUCKET_RATIO ** (index + 0.5)
    return mid_s


@dataclass(slots=True)
class Window:
    """Counts of one process's calls since its last sync (mutable: the gate owns one)."""

    ok: int = 0
    dropped: int = 0
    slow: int = 0
    failed: int = 0
    trailing_failures: int = 0
    """Failures (failed + slow) since this window's last success."""
    peak_in_use: int = 0
    retry_after_s: float = 0.0
    probe_ok: int = 0
    trips: int = 0
    """Times this process stopped calling after a run of failures (a local trip)."""
    wait_s: float = 0.0
    held_s: float = 0.0
    """Permit time of the calls that ended in this window (Little's law: the fleet's sum over
    an interval, divided by its length, is the mean number of calls in flight)."""
    latency: dict[int, int] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return self.ok + self.dropped + self.slow + self.failed

    def add(self, signal: Signal, *, latency_s: float | None, retry_after_s: float | None) -> None:
        if signal is Signal.OK:
            self.ok += 1
            self.trailing_failures = 0
            if latency_s is not None:
                b = bucket_of(latency_s)
                self.latency[b] = self.latency.get(b, 0) + 1
        elif signal is Signal.DROPPED:
            self.dropped += 1
            pause = clamp_retry_after_s(retry_after_s)
            if pause is not None:
                self.retry_after_s = max(self.retry_after_s, pause)
        elif signal is Signal.SLOW:
            self.slow += 1
            self.trailing_failures += 1
        else:
            self.failed += 1
            self.trailing_failures += 1

    def fields(self) -> dict[str, float]:
        """The counters the sync script adds to the fleet's totals (zeros left out)."""
        out: dict[str, float] = {
            name: value
            for name in ("ok", "dropped", "slow", "failed", "probe_ok", "trips")
            if (value := getattr(self, name))
        }
        if self.retry_after_s:
            out["retry_after_s"] = self.retry_after_s
        if self.held_s:
            out["held_ms"] = round(self.held_s * 1000)
        for b, n in self.latency.items():
            out[f"b{b}"] = n
        return out


@dataclass(frozen=True, slots=True)
class Totals:
    """The fleet's calls over one controller interval (what every process synced meanwhile)."""

    ok: int = 0
    dropped: int = 0
    slow: int = 0
    failed: int = 0
    streak: int = 0
    """Failures fleet-wide since the last sync that carried a success."""
    in_flight_peak: int = 0
    """Sum over processes of their peak calls in flight (an upper bound of the fleet's)."""
    held_s: float = 0.0
    """Permit time of the calls that ended in the interval, fleet-wide."""
    started_s: float = 0.0
    """When the interval began (Redis time; 0: unknown)."""
    retry_after_s: float = 0.0
    probe_ok: int = 0
    trips: int = 0
    latency: Mapping[int, int] = field(default_factory=dict)

    def mean_in_flight(self, now_s: float, default_interval_s: float) -> float:
        """Calls in flight on average over the interval ending at ``now_s`` (Little's law)."""
        length = now_s - self.started_s if self.started_s else default_interval_s
        return self.held_s / max(length, 0.05)

    @property
    def failures(self) -> int:
        return self.failed + self.slow

    @property
    def losses(self) -> int:
        """Calls the upstream refused or let time out: the loss rule's signal."""
        return self.dropped + self.slow

    def percentile_s(self, q: float, *, min_samples: int = 8) -> float | None:
        """The ``q`` quantile (0..1) of successful calls' latency; None with too few."""
        count = sum(self.latency.values())
        if count < min_samples:
            return None
        rank = q * count
        seen = 0
        for b in sorted(self.latency):
            seen += self.latency[b]
            if seen >= rank:
                return bucket_mid_s(b)
        return bucket_mid_s(max(self.latency))

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> Totals:
        """Parse the totals hash (missing fields are zero)."""
        latency = {int(k[1:]): int(float(v)) for k, v in raw.items() if k.startswith("b")}

        def num(name: str) -> float:
            try:
                return float(raw.get(name) or 0)
            except ValueError:
                return 0.0

        return cls(
            ok=int(num("ok")),
            dropped=int(num("dropped")),
            slow=int(num("slow")),
            failed=int(num("failed")),
            streak=int(num("streak")),
            in_flight_peak=int(num("peak_in_use")),
            held_s=num("held_ms") / 1000,
            started_s=num("started_ms") / 1000,
            retry_after_s=num("retry_after_s"),
            probe_ok=int(num("probe_ok")),
            trips=int(num("trips")),
            latency=latency,
        )
