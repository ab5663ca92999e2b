"""Publishing work to the broker by task name, in chunks of order ids."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from celery import Celery

from worker.queue.app import QUEUE_ORDERS, QUEUE_WEBHOOKS, TASK_DELIVER, TASK_PROCESS


def chunks(ids: Sequence[str], size: int) -> Iterable[list[str]]:
    """``ids`` cut into lists of at most ``size``."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def enqueue_orders(
    app: Celery, ids: Sequence[str], *, chunk_size: int, countdown_s: float | None = None
) -> int:
    """Send ``orders.process`` for ``ids`` in chunks; returns the number of messages.

    Raises the broker's error if Redis is unreachable: the caller decides whether that matters
    (the orders are committed already; the sweeper will enqueue them when due).
    """
    sent = 0
    with app.producer_or_acquire() as producer:
        for chunk in chunks(ids, chunk_size):
            app.send_task(
                TASK_PROCESS,
                args=[chunk],
                queue=QUEUE_ORDERS,
                countdown=countdown_s,
                producer=producer,
            )
            sent += 1
    return sent


def enqueue_deliveries(
    app: Celery,
    delivery_ids: Sequence[str],
    *,
    chunk_size: int,
    countdown_s: float | None = None,
) -> int:
    """Send ``webhooks.deliver`` for ``delivery_ids`` in chunks (``ORDERS_WEBHOOK_CHUNK_SIZE``:
    a chunk's deliveries are attempted at once, so a task lasts at most about two deadlines)."""
    sent = 0
    with app.producer_or_acquire() as producer:
        for chunk in chunks(delivery_ids, chunk_size):
            app.send_task(
                TASK_DELIVER,
                args=[chunk],
                queue=QUEUE_WEBHOOKS,
                countdown=countdown_s,
                producer=producer,
            )
            sent += 1
    return sent
