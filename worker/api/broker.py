"""The intake's link to the broker: configured lazily, dispatches after commit, never raises.

Intake commits first, then runs a dispatch pass (:mod:`worker.queue.dispatcher`): the new
orders go to the broker at once when it has room, else they wait in the database for their
fair share. When Redis is unreachable the orders stay committed and the sweep dispatches
them later. After a failure, dispatching is skipped for ``PAUSE_S`` so that a Redis outage
does not add a connection timeout to every request.

Each :class:`Broker` publishes through its own Celery producer app (same settings as
``worker.queue.app``): Celery caches its connection pool per app, so two intake apps with
different broker URLs in one process (tests) must not share one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

import structlog
from celery import Celery

from worker.embedded_redis import resolve_redis_url
from worker.queue import app as celery_app
from worker.queue.dispatcher import Dispatcher, build_dispatcher
from worker.queue.enqueue import enqueue_deliveries
from worker.redis_client import redis_client
from worker.settings import Settings

log = structlog.get_logger(__name__)

PAUSE_S = 5.0
PRODUCER_SETTINGS = (
    "broker_transport_options",
    "broker_pool_limit",
    "task_serializer",
    "accept_content",
    "task_default_queue",
    "task_routes",
    "task_publish_retry_policy",
)


class Broker:
    """Publishes order and webhook-delivery ids after commit."""

    def __init__(self, settings: Settings, on_failure: Callable[[], object] | None = None) -> None:
        self.settings = settings
        self.on_failure = on_failure
        self._lock = threading.Lock()
        self._url: str | None = None
        self._producer: Celery | None = None
        self._dispatcher: Dispatcher | None = None
        self._paused_until = 0.0
        self.failures = 0

    def url(self) -> str:
        """The broker URL (``ORDERS_REDIS_URL``, else the bundled Redis, started if needed)."""
        with self._lock:
            if self._url is None:
                self._url = resolve_redis_url(self.settings)
            return self._url

    def producer(self) -> Celery:
        """The producer app, configured on first use."""
        url = self.url()
        with self._lock:
            if self._producer is None:
                shared = celery_app.configure(url, self.settings)
                producer = Celery("orders-intake", set_as_current=False)
                producer.conf.update({k: shared.conf[k] for k in PRODUCER_SETTINGS}, broker_url=url)
                self._producer = producer
            return self._producer

    def dispatch(
        self,
        order_ids: Sequence[str],
        delivery_ids: Sequence[str],
        *,
        callers: Iterable[str] = (),
    ) -> bool:
        """Dispatch after ``order_ids`` of ``callers`` became due, and enqueue
        ``delivery_ids``; False (logged) on failure."""
        if not order_ids and not delivery_ids:
            return True
        if time.monotonic() < self._paused_until:
            log.warning("enqueue_skipped", orders=len(order_ids), reason="broker paused")
            self._failed()
            return False
        try:
            app = self.producer()
            if order_ids:
                self.dispatcher().run(callers=callers)
            if delivery_ids:
                enqueue_deliveries(app, delivery_ids, chunk_size=self.settings.webhook_chunk_size)
        except Exception as exc:  # any broker error: the sweeper will enqueue them when due
            self._paused_until = time.monotonic() + PAUSE_S
            self._failed()
            log.warning("enqueue_failed", orders=len(order_ids), error=repr(exc))
            return False
        return True

    def dispatcher(self) -> Dispatcher:
        """The dispatcher, publishing through the producer app, built on first use."""
        app = self.producer()
        url = self.url()
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = build_dispatcher(self.settings, redis_client(url), app)
            return self._dispatcher

    def _failed(self) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()

    def ping(self) -> None:
        """Raise unless Redis answers within a second (the ``check`` profile)."""
        redis_client(self.url(), profile="check").ping()

    def close(self) -> None:
        """Release the producer's connections."""
        with self._lock:
            if self._producer is not None:
                self._producer.close()
                self._producer = None
            self._dispatcher = None
