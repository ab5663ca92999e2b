"""Publishing work to the broker by task name, in chunks of ids."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from celery import Celery

from worker.queue.app import QUEUE_ORDERS, QUEUE_WEBHOOKS, TASK_DELIVER, TASK_PROCESS


def chunks(ids: Sequence[str], size: int) -> Iterable[list[str]]:
    """``ids`` cut into lists of at most ``size``."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _publish(
    app: Celery,
    task: str,
    queue: str,
    ids: Sequence[str],
    *,
    chunk_size: int,
    countdown_s: float | None,
) -> int:
    """One ``task`` message per chunk of ``ids`` on ``queue``, through one producer."""
    sent = 0
    with app.producer_or_acquire() as producer:
        for chunk in chunks(ids, chunk_size):
            app.send_task(task, args=[chunk], queue=queue, countdown=countdown_s, producer=producer)
            sent += 1
    return sent


def enqueue_orders(
    app: Celery, ids: Sequence[str], *, chunk_size: int, countdown_s: float | None = None
) -> int:
    """Send ``orders.process`` for ``ids`` in chunks; returns the number of messages.

    Raises the broker's error if Redis is unreachable: the caller decides whether that matters
    (the orders are committed already; the sweeper will enqueue them when due).
    """
    return _publish(
        app, TASK_PROCESS, QUEUE_ORDERS, ids, chunk_size=chunk_size, countdown_s=countdown_s
    )


def enqueue_deliveries(
    app: Celery,
    delivery_ids: Sequence[str],
    *,
    chunk_size: int,
    countdown_s: float | None = None,
) -> int:
    """Send ``webhooks.deliver`` for ``delivery_ids`` in chunks (``ORDERS_WEBHOOK_CHUNK_SIZE``:
    a chunk's deliveries are attempted at once, so a task lasts at most about two deadlines)."""
    return _publish(
        app,
        TASK_DELIVER,
        QUEUE_WEBHOOKS,
        delivery_ids,
        chunk_size=chunk_size,
        countdown_s=countdown_s,
    )
