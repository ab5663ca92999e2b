"""Celery tasks: thin wiring from messages to the pipeline, the sweeper and webhooks.

Tasks take ids, run after commit, check state on entry (inside the pipeline) and exit quietly
when the order has moved on. Retrying happens here and in the sweeper, nowhere else.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

import httpx
import structlog
from celery import Task
from celery.signals import worker_process_init
from sqlalchemy.exc import OperationalError

from worker.db import dispose_all, transaction
from worker.ids import utcnow
from worker.pipeline import retention, sweeper
from worker.queue.app import LAST_SWEEP_KEY, TASK_DELIVER, TASK_PROCESS, TASK_SWEEP, app
from worker.queue.enqueue import enqueue_deliveries, enqueue_orders
from worker.queue.runtime import get_runtime, reset_runtime
from worker.webhooks.delivery import deliver as deliver_webhooks

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
def process_orders(self: Task, order_ids: list[str]) -> int:
    """Take the given orders as far as they can go; re-enqueue short waits with a countdown."""
    rt = get_runtime()
    try:
        result = rt.pipeline.run(order_ids)
    except OperationalError as exc:
        # The database is unreachable: nothing moved; try the message again shortly.
        raise self.retry(exc=exc, countdown=5) from exc
    for delay, ids in _requeue(result.requeue).items():
        enqueue_orders(rt.celery, ids, chunk_size=rt.settings.chunk_size, countdown_s=delay or None)
    if result.deliveries:
        enqueue_deliveries(rt.celery, result.deliveries)
    return result.moved


@app.task(name=TASK_SWEEP)
def sweep() -> dict[str, int]:
    """Recover expired leases and enqueue whatever is due (orders and deliveries)."""
    rt = get_runtime()
    now = utcnow()
    grace = rt.settings.enqueue_grace_s
    with transaction(rt.settings.database_url) as session:
        recovered = sweeper.recover_expired_leases(session, now=now, limit=SWEEP_LIMIT)
    with transaction(rt.settings.database_url) as session:
        orders = sweeper.take_due_orders(session, now=now, grace_s=grace, limit=SWEEP_LIMIT)
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
    rt.redis.set(LAST_SWEEP_KEY, f"{time.time():.3f}")
    if orders:
        enqueue_orders(rt.celery, orders, chunk_size=rt.settings.chunk_size)
    if deliveries:
        enqueue_deliveries(rt.celery, deliveries)
    if recovered or orders or deliveries:
        log.info(
            "swept",
            recovered=recovered,
            orders=len(orders),
            deliveries=len(deliveries),
            purged_keys=purged,
        )
    return {"recovered": recovered, "orders": len(orders), "deliveries": len(deliveries)}


_webhook_client: httpx.Client | None = None


@app.task(name=TASK_DELIVER)
def deliver(delivery_ids: list[str]) -> int:
    """Attempt each webhook delivery once; short retries come back with a countdown."""
    global _webhook_client
    rt = get_runtime()
    if _webhook_client is None:
        _webhook_client = httpx.Client(
            timeout=rt.settings.webhook_timeout_s, follow_redirects=False
        )
    requeue = deliver_webhooks(
        delivery_ids,
        rt.settings.database_url,
        _webhook_client,
        rt.settings.webhook_allow_private,
        rt.settings.webhook_max_attempts,
    )
    for delay, ids in _requeue(requeue).items():
        for chunk_start in range(0, len(ids), 50):
            app.send_task(TASK_DELIVER, args=[ids[chunk_start : chunk_start + 50]], countdown=delay)
    return len(delivery_ids)


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Pooled connections and threads must not cross a fork.
    dispose_all()
    reset_runtime()
