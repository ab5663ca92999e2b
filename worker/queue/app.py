"""The Celery app: Redis broker, settings for at-least-once delivery, task names and queues.

Producers (intake, sweeper) send tasks by name with ``send_task``; they never import tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import pools

from worker.settings import Settings, get_settings

TASK_PROCESS = "orders.process"
TASK_SWEEP = "orders.sweep"
TASK_DISPATCH = "orders.dispatch"
TASK_DELIVER = "webhooks.deliver"
QUEUE_ORDERS = "orders"
QUEUE_WEBHOOKS = "webhooks"
LAST_SWEEP_KEY = "orders:last-sweep-at"
"""Liveness: set each time a worker runs the sweep beat scheduled (read by ``orders health``)."""

# Longer than any countdown we schedule (retry_countdown_max_s): Redis re-delivers an
# unacknowledged message after this, so longer waits live in the database (due_at).
VISIBILITY_TIMEOUT_S = 3600

app = Celery("orders")
_configured_with: str | None = None


def configure(broker_url: str, settings: Settings | None = None) -> Celery:
    """Point the app at ``broker_url`` and apply our settings (idempotent)."""
    global _configured_with
    settings = settings or get_settings()
    if _configured_with == broker_url:
        return app
    if _configured_with is not None:
        # Pointing at another broker (tests, CLI): drop pools bound to the old one.
        private: Any = app  # attributes with no public way to drop them (nor in celery-types)
        if private._pool is not None:
            private._pool.force_close_all()
            private._pool = None
        private.amqp._producer_pool = None
        # kombu keeps producer pools per broker URL process-wide: coming back to a URL used
        # before would hand out the pool closed above ("Acquire on closed pool").
        pools.reset()
    app.conf.update(
        broker_url=broker_url,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # A message is gone only once its run finished: a killed worker's chunk is redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per process: chunks wait in Redis, not behind a busy process.
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE_ORDERS,
        task_routes={
            TASK_PROCESS: {"queue": QUEUE_ORDERS},
            TASK_SWEEP: {"queue": QUEUE_ORDERS},
            TASK_DISPATCH: {"queue": QUEUE_ORDERS},
            TASK_DELIVER: {"queue": QUEUE_WEBHOOKS},
        },
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
            "health_check_interval": 10,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_pool_limit=64,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        beat_schedule={
            "sweep": {
                "task": TASK_SWEEP,
                "schedule": settings.sweep_interval_s,
                "options": {"expires": settings.sweep_interval_s * 2},
            },
        },
    )
    _configured_with = broker_url
    return app
