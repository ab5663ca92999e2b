"""Load on the ``/api`` endpoints: calls in flight, their peak, and admission by capacity.

A call is in flight from its admission until its answer is ready, whatever the path out
(answer, fault, hold, exception, cancellation), and that includes its latency sleep. The
token endpoint is outside (the real one is a separate service). Only the serving event
loop touches a :class:`LoadGauge`, and nothing awaits between its check and its update, so
it needs no lock.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from api_stub.config import StubConfig

__all__ = ["LoadGauge", "api_latency_s", "retry_after_headers"]


class LoadGauge:
    """How many ``/api`` calls are in flight now, and the most there were at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0

    @contextmanager
    def admit(self, capacity: int) -> Iterator[int | None]:
        """Hold a slot for one call while the block runs, unless ``capacity`` are taken.

        Args:
            capacity: Most calls in flight at once; 0 for no limit.

        Yields:
            How many other calls were in flight when this one was admitted, or ``None``
            when it is refused (it then holds no slot).
        """
        if capacity and self.in_flight >= capacity:
            yield None
            return
        others = self.in_flight
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            yield others
        finally:
            self.in_flight -= 1

    def reset_peak(self) -> None:
        """Start a new peak from the calls in flight now (they are still counted)."""
        self.peak = self.in_flight


def api_latency_s(config: StubConfig, others_in_flight: int) -> float:
    """Latency of a call admitted while ``others_in_flight`` other calls were in flight."""
    return (config.latency_ms + config.latency_per_in_flight_ms * others_in_flight) / 1000


def retry_after_headers(retry_after_s: float) -> dict[str, str] | None:
    """``Retry-After`` in whole seconds, rounded up (the header takes integers); none for 0."""
    return {"Retry-After": str(math.ceil(retry_after_s))} if retry_after_s > 0 else None
