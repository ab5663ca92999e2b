"""Running an intake call: decode, accept and serialise off the event loop, then enqueue.

The orders are always committed before the answer is sent. A single order is enqueued before
it too; a batch is enqueued right after it (a background task of the response), which keeps
the broker's time (about 1 ms per message, 200 messages for 10,000 orders) out of the caller's
latency. If the process dies in between, the sweeper enqueues the orders once their ``due_at``
passes, exactly as when Redis is down.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import orjson
from fastapi import Request, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from worker.api.broker import Broker
from worker.api.deps import read_body
from worker.api.errors import ApiError
from worker.api.metrics import Metrics
from worker.intake.checks import decode_json
from worker.intake.service import Outcome
from worker.settings import Settings

Accept = Callable[..., Outcome]
"""``intake_service.accept_order`` or ``accept_batch`` (``key``, ``dispatch``, ``may_hold_nul``
are keyword arguments)."""


class AfterResponse:
    """Enqueues at once, or (``deferred``) collects and sends once the answer is out."""

    def __init__(self, broker: Broker, deferred: bool) -> None:
        self.broker = broker
        self.deferred = deferred
        self.pending: list[tuple[list[str], list[str], list[str]]] = []

    def __call__(
        self,
        order_ids: Sequence[str],
        delivery_ids: Sequence[str],
        *,
        callers: Iterable[str] = (),
    ) -> None:
        if self.deferred:
            self.pending.append((list(order_ids), list(delivery_ids), list(callers)))
        else:
            self.broker.dispatch(order_ids, delivery_ids, callers=callers)

    def task(self) -> BackgroundTask | None:
        if not self.pending:
            return None
        return BackgroundTask(self._send)

    def _send(self) -> None:
        for order_ids, delivery_ids, callers in self.pending:
            self.broker.dispatch(order_ids, delivery_ids, callers=callers)


GC_PAUSE_MIN_BYTES = 2_000_000
"""Bodies from this size pause the collector (below it the pause measured nothing)."""
_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = True


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large batch is handled (other threads included).

    A 10,000-order batch allocates a few hundred thousand objects that live until the answer
    is sent; without this the collector runs ~270 passes over them mid-batch. Measured with
    ``bench/gc_pause.py`` (PostgreSQL, load average 0.1-0.7, median of 5-7): 10,000 orders
    (4.5 MB) 1.23 s with the collector, 1.01 s paused (-18 %); 3,000 orders 0.346 / 0.336 s
    and 1,000 orders 0.123 / 0.122 s (no difference). So only bodies of at least
    ``GC_PAUSE_MIN_BYTES`` pause it, and each caller has at most
    ``ORDERS_MAX_BATCHES_IN_FLIGHT_PER_CALLER`` batches in progress. Reference counting still
    frees everything it can meanwhile.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def _intake(
    accept: Accept,
    settings: Settings,
    caller_id: str,
    body: bytes,
    *,
    key: str | None,
    dispatch: AfterResponse,
) -> tuple[Outcome, bytes]:
    """Decode, accept and serialise in a worker thread: nothing big runs on the event loop."""
    with gc_paused() if len(body) >= GC_PAUSE_MIN_BYTES else nullcontext():
        document = decode_json(body)
        outcome = accept(
            settings,
            caller_id,
            document,
            key=key,
            dispatch=dispatch,
            may_hold_nul=b"\\u0000" in body,
        )
        return outcome, orjson.dumps(outcome.body)


class CallerSlots:
    """Intake calls in progress per caller in this process, at most ``limit`` each.

    A batch holds up to ``ORDERS_MAX_BATCH_BYTES`` and several times that in memory while it
    is taken in: one caller sending many at once must not take the process's memory.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {}

    @contextmanager
    def hold(self, caller_id: str, limit: int) -> Iterator[None]:
        """A slot for ``caller_id``; ``ApiError`` 429 with ``Retry-After`` when all are taken."""
        with self._lock:
            busy = self._busy.get(caller_id, 0)
            if busy >= limit:
                message = (
                    f"{busy} batch(es) of this caller are being taken in already (at most "
                    f"{limit} at once, ORDERS_MAX_BATCHES_IN_FLIGHT_PER_CALLER): retry when "
                    "one has been answered"
                )
                raise ApiError(429, message, headers={"Retry-After": "1"})
            self._busy[caller_id] = busy + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._busy[caller_id] - 1
                if left:
                    self._busy[caller_id] = left
                else:
                    del self._busy[caller_id]


batch_slots = CallerSlots()
"""The process's batch intake slots."""


async def submit(
    accept: Accept,
    request: Request,
    *,
    caller_id: str,
    key: str | None,
    settings: Settings,
    broker: Broker,
    metrics: Metrics,
    defer_enqueue: bool = False,
    slots_per_caller: int | None = None,
) -> Response:
    """Answer an intake call: 202 with the body, or 200 (``Idempotent-Replayed``) on a repeat.

    ``slots_per_caller``: at most this many such calls of one caller at once (429 beyond),
    counted before the body is read.
    """
    if slots_per_caller is None:
        return await _submit(
            accept, request, caller_id, key, settings, broker, metrics, defer_enqueue
        )
    with batch_slots.hold(caller_id, slots_per_caller):
        return await _submit(
            accept, request, caller_id, key, settings, broker, metrics, defer_enqueue
        )


async def _submit(
    accept: Accept,
    request: Request,
    caller_id: str,
    key: str | None,
    settings: Settings,
    broker: Broker,
    metrics: Metrics,
    defer_enqueue: bool,
) -> Response:
    body = await read_body(request)
    after = AfterResponse(broker, defer_enqueue)
    outcome, content = await run_in_threadpool(
        lambda: _intake(accept, settings, caller_id, body, key=key, dispatch=after)
    )
    metrics.accepted.inc(outcome.accepted)
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    if "id" in outcome.body:
        headers["Location"] = f"/v1/orders/{outcome.body['id']}"
    return Response(
        content,
        200 if outcome.replayed else 202,
        headers,
        media_type="application/json",
        background=after.task(),
    )
