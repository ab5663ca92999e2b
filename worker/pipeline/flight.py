"""The calls of one run in flight: each answer applied as soon as it is back, leases renewed.

Answers that complete within ``LINGER_S`` of each other share one transaction (the batched
writes are most of the throughput at low latency); an order whose preview won goes on to its
submit at once, without waiting for the rest of its chunk. While calls are out, the run's
lease on their orders is extended every ``beat_s``: the lease detects dead workers, not slow
calls. A flight knows nothing of the pipeline: it is given how to call, how to settle a burst
of answers and how to renew leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Executor, Future, wait
from typing import Any

from worker.errors import UpstreamError
from worker.models import OrderLike

# Wait this long for more answers before writing: one transaction for a burst of answers
# (the writes are most of a worker's CPU). Near the end of a run, with few calls left, the
# wait is short: the orders' next calls start sooner and the run's permits do not sit idle.
LINGER_S = 0.02
LINGER_TAIL_S = 0.005
TAIL_CALLS = 8

Outcome = tuple[Any, UpstreamError | None]
Answer = tuple[OrderLike, str, Any, UpstreamError | None]
Call = Future[Outcome]


class Flight:
    """The pending calls of one run (used by one thread: the run's)."""

    def __init__(
        self,
        executor: Executor,
        *,
        call: Callable[[OrderLike, str], Outcome],
        settle: Callable[[list[Answer]], set[str]],
        renew: Callable[[list[str]], None],
        beat_s: float,
    ) -> None:
        """``settle`` applies a burst of answers and returns the ids whose move won;
        ``renew`` extends the lease of the orders still waiting on a call."""
        self.executor = executor
        self.call = call
        self.settle = settle
        self.renew = renew
        self.beat_s = beat_s
        self.pending: dict[Call, tuple[OrderLike, str]] = {}
        self.next_beat = time.monotonic() + beat_s

    def start(self, order: OrderLike, step: str) -> None:
        future = self.executor.submit(self.call, order, step)
        self.pending[future] = (order, step)

    def land(self, until: Callable[[int], bool] | None = None) -> bool:
        """Apply every answer as it comes back; start submits after won previews.

        With ``until``, stop early (returning False) once ``until(calls still pending)`` is
        true after an answer was applied: the rest can land on another thread.
        """
        while self.pending:
            timeout = max(0.0, self.next_beat - time.monotonic())
            done, rest = wait(list(self.pending), timeout, FIRST_COMPLETED)
            if done and rest:
                linger = LINGER_S if len(rest) >= TAIL_CALLS else LINGER_TAIL_S
                more, _ = wait(rest, linger, ALL_COMPLETED)
                done |= more
            if done:
                self._apply(done)
            if time.monotonic() >= self.next_beat:
                self.renew([order.id for order, _ in self.pending.values()])
                self.next_beat = time.monotonic() + self.beat_s
            if done and self.pending and until is not None and until(len(self.pending)):
                return False
        return True

    def _apply(self, done: set[Call]) -> None:
        answers: list[Answer] = [(*self.pending.pop(f), *f.result()) for f in done]
        won = self.settle(answers)
        for order, step, _, error in answers:
            if step == "preview" and error is None and order.id in won:
                self.start(order, "submit")
