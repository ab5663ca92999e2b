"""Celery tasks: thin wiring from messages to the pipeline, the sweeper and webhooks.

Tasks take ids, run after commit, check state on entry (inside the pipeline) and exit quietly
when the order has moved on. Retrying happens here and in the sweeper, nowhere else.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import structlog
from celery import Task
from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.exc import OperationalError

from worker.batches import watch as batch_watch
from worker.db import dispose_all, transaction
from worker.ids import utcnow
from worker.pipeline import retention, sweeper
from worker.pipeline.run import RunResult
from worker.queue import backlog, watchdog  # noqa: F401  (watchdog: arms the stall check)
from worker.queue.app import (
    LAST_SWEEP_KEY,
    QUEUE_ORDERS,
    TASK_DELIVER,
    TASK_DISPATCH,
    TASK_PROCESS,
    TASK_SWEEP,
    app,
)
from worker.queue.dispatcher import note_worker_process
from worker.queue.enqueue import enqueue_deliveries
from worker.queue.runtime import Runtime, get_runtime, peek_runtime, reset_runtime
from worker.webhooks.delivery import Deliverer
from worker.webhooks.slots import DeliveryClaims, EndpointSlots

log = structlog.get_logger(__name__)
# Bounds one sweep's transactions; whatever is left is taken by the next sweep seconds later.
SWEEP_LIMIT = 5000


def _requeue(pairs: Sequence[tuple[str, float]]) -> dict[float, list[str]]:
    # Delays rounded to 0.1 s: one message per chunk of a delay group, not one per order.
    by_delay: dict[float, list[str]] = defaultdict(list)
    for item_id, delay in pairs:
        by_delay[round(delay, 1)].append(item_id)
    return by_delay


@app.task(name=TASK_PROCESS, bind=True, max_retries=5)
def process_orders(self: Task[[list[str]], int], order_ids: list[str]) -> int:
    """Take the given orders as far as they can go; short waits come back with a countdown.

    The run's last calls may land on the process's tail thread while the next message starts
    (``worker/pipeline/tail.py``): then what the run leaves is sent from there."""
    rt = get_runtime()
    note_worker_process(rt.redis, rt.name)
    try:
        rt.pipeline.run_overlapped(order_ids, tail=rt.tail, then=partial(_after_run, rt))
    except OperationalError as exc:
        # The database is unreachable: nothing moved; try the message again shortly.
        raise self.retry(exc=exc, countdown=5) from exc
    # This process has room again: refill the queue from the backlog.
    rt.dispatcher.run()
    return len(order_ids)


def _after_run(rt: Runtime, result: RunResult) -> None:
    """What a run leaves: countdown ticks for short waits, webhook deliveries."""
    for delay, ids in _requeue(result.requeue).items():
        # A short wait is a countdown tick that dispatches whatever is due then: retries and
        # follow-ups go out through the same fair share as new orders.
        app.send_task(TASK_DISPATCH, args=[ids], queue=QUEUE_ORDERS, countdown=delay or None)
    if result.deliveries:
        enqueue_deliveries(rt.celery, result.deliveries, chunk_size=rt.settings.webhook_chunk_size)


@app.task(name=TASK_DISPATCH)
def dispatch(order_ids: list[str]) -> int:
    """Dispatch what is due now; ``order_ids`` (waits that ended) name callers with work."""
    rt = get_runtime()
    with transaction(rt.settings.database_url) as session:
        callers = backlog.callers_of(session, order_ids)
    return rt.dispatcher.run(callers=callers).sent


@app.task(name=TASK_SWEEP)
def sweep() -> dict[str, int]:
    """Recover expired leases, dispatch whatever is due (rebuilding the list of callers with
    work from the database), enqueue due deliveries, apply retention."""
    rt = get_runtime()
    now = utcnow()
    grace = rt.settings.enqueue_grace_s
    with transaction(rt.settings.database_url) as session:
        recovered = sweeper.recover_expired_leases(session, now=now, limit=SWEEP_LIMIT)
    with transaction(rt.settings.database_url) as session:
        deliveries = sweeper.take_due_deliveries(session, now=now, grace_s=grace, limit=SWEEP_LIMIT)
        purged = sweeper.purge_idempotency_keys(session, now=now)
    with transaction(rt.settings.database_url) as session:
        retention.purge(
            session,
            now=now,
            orders_days=rt.settings.retention_orders_days,
            deliveries_days=rt.settings.retention_deliveries_days,
            batch=rt.settings.retention_batch,
        )
    batches = batch_watch.sweep(rt.settings.database_url)
    deliveries += batches["deliveries"]
    rt.redis.set(LAST_SWEEP_KEY, f"{time.time():.3f}")
    orders = rt.dispatcher.run(rebuild=True).sent
    if deliveries:
        enqueue_deliveries(rt.celery, deliveries, chunk_size=rt.settings.webhook_chunk_size)
    if recovered or orders or deliveries:
        log.info(
            "swept",
            recovered=recovered,
            orders=orders,
            deliveries=len(deliveries),
            purged_keys=purged,
        )
    return {"recovered": recovered, "orders": orders, "deliveries": len(deliveries)}


_deliverer: tuple[int, Deliverer] | None = None


def _get_deliverer() -> Deliverer:
    """This process's deliverer: a thread per delivery of a chunk, so a chunk runs at once."""
    global _deliverer
    if _deliverer is None or _deliverer[0] != os.getpid():
        rt = get_runtime()
        s = rt.settings
        deliverer = Deliverer(
            db_url=s.database_url,
            slots=EndpointSlots(
                rt.redis,
                cap=s.webhook_max_in_flight_per_endpoint,
                # A slot is held for up to two deadlines; longer only if its process died.
                lease_s=2 * s.webhook_timeout_s + 30,
            ),
            claims=DeliveryClaims(rt.redis, lease_s=2 * s.webhook_timeout_s + 30),
            executor=ThreadPoolExecutor(s.webhook_chunk_size, thread_name_prefix="webhook"),
            allow_private=s.webhook_allow_private,
            max_attempts=s.webhook_max_attempts,
            deadline_s=s.webhook_timeout_s,
        )
        _deliverer = (os.getpid(), deliverer)
    return _deliverer[1]


@app.task(name=TASK_DELIVER)
def deliver(delivery_ids: list[str]) -> int:
    """Attempt each webhook delivery once; short retries come back with a countdown."""
    rt = get_runtime()
    requeue = _get_deliverer().run(delivery_ids)
    for delay, ids in _requeue(requeue).items():
        enqueue_deliveries(
            rt.celery, ids, chunk_size=rt.settings.webhook_chunk_size, countdown_s=delay
        )
    return len(delivery_ids)


@worker_process_shutdown.connect
def _before_exit(**_: object) -> None:
    # A warm shutdown lets the tail of the last run land (its calls and their answers).
    rt = peek_runtime()
    if rt is not None:
        rt.tail.join(rt.settings.lease_s)


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Pooled connections and threads must not cross a fork.
    dispose_all()
    reset_runtime()
