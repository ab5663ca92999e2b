"""The calls of one run in flight: each answer applied as soon as it is back, leases renewed.

Answers that complete within ``LINGER_S`` of each other share one transaction (the batched
writes are most of the throughput at low latency); an order whose preview won goes on to its
submit at once, without waiting for the rest of its chunk. While calls are out, the run's
lease on their orders is extended every third of ``ORDERS_LEASE_S``: the lease detects dead
workers, not slow calls.
"""

from __future__ import annotations

import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, wait
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from worker import repository as repo
from worker.db import transaction
from worker.errors import UpstreamError
from worker.ids import utcnow
from worker.models import Order
from worker.states import Status

if TYPE_CHECKING:
    from worker.pipeline.run import Pipeline, _Run

S = Status
# Wait this long for more answers before writing: one transaction for a burst of answers.
LINGER_S = 0.02

Call = Future[tuple[Any, UpstreamError | None]]


class Flight:
    """The pending calls of one run (used by one thread: the run's)."""

    def __init__(self, pipeline: Pipeline, run: _Run) -> None:
        self.pipeline = pipeline
        self.run = run
        self.pending: dict[Call, tuple[Order, str]] = {}
        self.beat_s = pipeline.settings.lease_s / 3
        self.next_beat = time.monotonic() + self.beat_s

    def start(self, order: Order, step: str) -> None:
        future = self.pipeline.executor.submit(self.pipeline.call, order, step)
        self.pending[future] = (order, step)

    def land(self) -> None:
        """Apply every answer as it comes back; start submits after won previews."""
        while self.pending:
            timeout = max(0.0, self.next_beat - time.monotonic())
            done, rest = wait(list(self.pending), timeout, FIRST_COMPLETED)
            if done and rest:
                more, _ = wait(rest, LINGER_S, ALL_COMPLETED)
                done |= more
            if done:
                self._apply(done)
            if time.monotonic() >= self.next_beat:
                self._heartbeat()

    def _apply(self, done: set[Call]) -> None:
        answers = [(*self.pending.pop(f), *f.result()) for f in done]
        decisions = [
            self.pipeline.decide(o, step, ans, err, run=self.run) for o, step, ans, err in answers
        ]
        won = self.pipeline.apply(decisions, self.run)
        for order, step, _, error in answers:
            if step == "preview" and error is None and order.id in won:
                self.start(order, "submit")

    def _heartbeat(self) -> None:
        lease_until = utcnow() + timedelta(seconds=self.pipeline.settings.lease_s)
        ids = [order.id for order, _ in self.pending.values()]
        with transaction(self.pipeline.db_url) as session:
            repo.renew_leases(session, ids, owner=self.run.owner, lease_until=lease_until)
        self.run.lease_until = lease_until
        self.next_beat = time.monotonic() + self.beat_s
