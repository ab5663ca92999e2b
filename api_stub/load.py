"""Load on the ``/api`` endpoints: calls in flight, their peak and time-weighted mean, and
admission by capacity (refused at once, or queued inside the stub).

A call is in flight from its arrival until its answer is ready, whatever the path out
(answer, fault, hold, exception, cancellation), and that includes its latency sleep and, in
queue mode, its wait for a slot; a refused call is never in flight. The token endpoint is
outside (the real one is a separate service). Only the serving event loop touches a
:class:`LoadGauge`, and nothing awaits between its check and its update, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from api_stub.config import StubConfig

__all__ = ["LoadGauge", "api_latency_s", "jitter_factor", "retry_after_headers"]


class LoadGauge:
    """How many ``/api`` calls are in flight now, the most at once, and the mean over time.

    ``serving`` counts the calls holding a capacity slot; ``in_flight`` adds those queued.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.serving = 0
        self.peak = 0
        self.peak_queued = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._since = self._changed_at = time.monotonic()
        self._area = 0.0

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    def _move(self, delta: int) -> None:
        now = time.monotonic()
        self._area += self.in_flight * (now - self._changed_at)
        self._changed_at = now
        self.in_flight += delta
        self.peak = max(self.peak, self.in_flight)

    def mean_in_flight(self) -> float:
        """Time-weighted mean of ``in_flight`` since the last :meth:`reset_peak`."""
        now = time.monotonic()
        area = self._area + self.in_flight * (now - self._changed_at)
        return area / (now - self._since) if now > self._since else float(self.in_flight)

    @contextmanager
    def admit(self, capacity: int) -> Iterator[int | None]:
        """Hold a slot for one call while the block runs, unless ``capacity`` are taken.

        Args:
            capacity: Most calls in flight at once; 0 for no limit.

        Yields:
            How many other calls were in flight when this one was admitted, or ``None``
            when it is refused (it then holds no slot).
        """
        if capacity and (self.serving >= capacity or self._waiters):
            yield None
            return
        others = self.serving
        self.serving += 1
        self._move(+1)
        try:
            yield others
        finally:
            self._release()

    @asynccontextmanager
    async def queue(self, capacity: int) -> AsyncIterator[int]:
        """Like :meth:`admit`, but a call beyond ``capacity`` waits its turn (first come).

        Yields:
            How many other calls held a slot when this one got its own.
        """
        self._move(+1)
        if capacity and (self.serving >= capacity or self._waiters):
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(turn)
            self.peak_queued = max(self.peak_queued, len(self._waiters))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # the slot was handed over just as we were cancelled
                else:
                    self._waiters.remove(turn)
                    self._move(-1)
                raise
        else:
            self.serving += 1
        try:
            yield self.serving - 1
        finally:
            self._release()

    def _release(self) -> None:
        self._move(-1)
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes to the next in line: serving unchanged
                return
        self.serving -= 1

    def reset_peak(self) -> None:
        """Start a new peak and mean from the calls in flight now (they are still counted)."""
        self.peak = self.in_flight
        self.peak_queued = len(self._waiters)
        self._since = self._changed_at = time.monotonic()
        self._area = 0.0


def jitter_factor(sigma: float, rng: random.Random) -> float:
    """A log-normal multiplier with median 1: ``exp(N(0, sigma))``; 1 when ``sigma`` is 0."""
    return rng.lognormvariate(0.0, sigma) if sigma > 0 else 1.0


def api_latency_s(config: StubConfig, others_in_flight: int, jitter: float = 1.0) -> float:
    """Latency of a call admitted while ``others_in_flight`` other calls were in flight."""
    return jitter * (config.latency_ms + config.latency_per_in_flight_ms * others_in_flight) / 1000


def retry_after_headers(retry_after_s: float) -> dict[str, str] | None:
    """``Retry-After`` in whole seconds, rounded up (the header takes integers); none for 0."""
    return {"Retry-After": str(math.ceil(retry_after_s))} if retry_after_s > 0 else None
