"""Prometheus metrics of the intake: requests by route, orders accepted, orders by status, and
the fleet's upstream call budget (read from Redis: limit, calls in flight, breaker, refusals).

Each app has its own registry (several apps can live in one process, e.g. in tests). Order
counts by status come from one ``GROUP BY`` on the database, cached for ``cache_s`` seconds so
that frequent scrapes cost nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from worker.db import transaction
from worker.flow.view import snapshot
from worker.models import Order

if TYPE_CHECKING:
    from worker.flow.store import FlowStore

log = structlog.get_logger(__name__)

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class OrdersByStatus(Collector):
    """``orders_by_status{status}`` from the database, cached."""

    def __init__(self, db_url: str, cache_s: float) -> None:
        self.db_url = db_url
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._read_at = float("-inf")

    def counts(self) -> dict[str, int]:
        """Orders per status (at most ``cache_s`` old; the last good read if the DB is down)."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_s:
                try:
                    with transaction(self.db_url) as session:
                        rows = session.execute(
                            select(Order.status, func.count()).group_by(Order.status)
                        ).all()
                    self._counts = {status: int(n) for status, n in rows}
                except SQLAlchemyError as exc:
                    log.warning("metrics_status_counts_failed", error=str(exc))
                self._read_at = time.monotonic()
            return dict(self._counts)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "orders_by_status", "Orders in each status (all callers)", labels=["status"]
        )
        for status, count in sorted(self.counts().items()):
            family.add_metric([status], count)
        yield family


class UpstreamBudget(Collector):
    """``orders_upstream_*``: the fleet-wide call budget as the workers left it in Redis."""

    def __init__(self, store: Callable[[], FlowStore]) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            snap = snapshot(self.store())
        except Exception as exc:  # Redis down: the other metrics still answer
            log.warning("metrics_upstream_budget_failed", error=repr(exc))
            return
        gauges = {
            "orders_upstream_limit": ("Learned limit on upstream calls in flight", snap.limit),
            "orders_upstream_ceiling": ("ORDERS_UPSTREAM_MAX_IN_FLIGHT", snap.ceiling),
            "orders_upstream_in_flight": ("Upstream calls in flight, fleet-wide", snap.in_flight),
            "orders_upstream_paused_seconds": ("Pause left from a Retry-After", snap.paused_s),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        breaker = GaugeMetricFamily(
            "orders_upstream_breaker", "Outage breaker state (1 = current)", labels=["state"]
        )
        for mode in ("closed", "open", "half_open"):
            breaker.add_metric([mode], 1.0 if snap.breaker == mode else 0.0)
        yield breaker
        calls = CounterMetricFamily(
            "orders_upstream_calls",
            "Upstream calls by what they said about the upstream (dropped = refused)",
            labels=["signal"],
        )
        for signal in ("ok", "dropped", "slow", "failed"):
            calls.add_metric([signal], snap.calls.get(signal, 0.0))
        yield calls
        yield CounterMetricFamily(
            "orders_upstream_permit_wait_seconds",
            "Time calls spent waiting for a permit, summed over calls",
            value=snap.calls.get("wait_s", 0.0),
        )


class Metrics:
    """The intake's metrics and their registry."""

    def __init__(
        self, db_url: str, cache_s: float = 5.0, flow: Callable[[], FlowStore] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "orders_http_requests",
            "HTTP requests handled",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "orders_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.accepted = Counter(
            "orders_accepted", "Orders accepted by intake (new orders)", registry=self.registry
        )
        self.enqueue_failures = Counter(
            "orders_enqueue_failures",
            "Enqueues after commit that failed (the sweeper recovers)",
            registry=self.registry,
        )
        self.registry.register(OrdersByStatus(db_url, cache_s))
        if flow is not None:
            self.registry.register(UpstreamBudget(flow))

    def observe(self, method: str, route: str, status: int, elapsed_s: float) -> None:
        """Record one request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(elapsed_s)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
