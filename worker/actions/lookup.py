"""The API process's own read-only link to the upstream, for an operator's resolve.

Built on first use (most API processes never need it) and shared by the process: it reads
one order object by id, with the fleet's shared token in Redis (``worker.upstream.token``).
"""

from __future__ import annotations

import threading
from typing import Any

import redis

from schemas.upstream_responses import LimioOrderObject, OrderSummary
from worker.pipeline.reconcile import find_upstream
from worker.redis_client import redis_client
from worker.settings import Settings
from worker.upstream.client import UpstreamClient
from worker.upstream.shared import shared_upstream


class UpstreamLookup:
    """``get(upstream_id)``: the upstream's order object; ``search(external_id)``: the orders
    carrying it in the order list (both raise ``UpstreamError``)."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self._settings = settings
        self._redis_url = redis_url
        self._lock = threading.Lock()
        self._client: UpstreamClient | None = None
        self._redis: redis.Redis | None = None

    def _upstream(self) -> UpstreamClient:
        with self._lock:
            if self._client is None:
                settings = self._settings
                self._redis = redis_client(self._redis_url)
                _, self._client = shared_upstream(settings, self._redis)
            return self._client

    def get(self, upstream_id: str) -> LimioOrderObject:
        """``GET /api/objects/limio/orders/{upstream_id}`` (blocking)."""
        return self._upstream().get_order(upstream_id)

    def search(self, external_id: str) -> list[OrderSummary]:
        """The upstream orders carrying ``external_id`` on the newest
        ``ORDERS_RECONCILE_MAX_PAGES`` pages of the order list (blocking; ``PermanentError``:
        the upstream offers no list)."""
        pages = self._settings.reconcile_max_pages
        found = find_upstream(self._upstream(), {external_id}, max_pages=pages)
        return found.get(external_id, [])

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            if self._redis is not None:
                self._redis.close()
            self._client = self._redis = None


def shared_lookup(state: Any) -> UpstreamLookup:
    """The app's upstream reader (``state``: the app's state, with ``settings`` and
    ``broker``), built on first use and closed with the app."""
    if getattr(state, "upstream_lookup", None) is None:
        state.upstream_lookup = UpstreamLookup(state.settings, state.broker.url())
    lookup: UpstreamLookup = state.upstream_lookup
    return lookup
