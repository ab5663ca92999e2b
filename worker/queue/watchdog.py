"""A worker that has stopped consuming (celery #8030) notices it and exits non-zero.

After a Redis reconnect a Celery worker may stay connected yet never fetch another message.
Nothing inside the worker fails, so nothing restarts it: a supervisor (Compose
``restart: unless-stopped``, systemd, Kubernetes) only reacts to an exit. So a thread in the
main worker process (the one that fetches messages) checks, every sweep interval, whether it
is *idle with work waiting*: it holds no task, has fetched none for ``stall_after_s``, the
``orders`` queue is not empty (beat's sweep messages alone keep it so), and no worker anywhere
ran a sweep for ``stall_after_s`` either (so the fleet is not just busy elsewhere). Then it
sets Celery's ``should_stop`` to :data:`STALLED_EXIT_CODE`: the worker's event loop shuts down
warmly and the process exits with that code (after :data:`HARD_EXIT_AFTER_S` it exits
regardless). Importing this module (``worker.queue.tasks`` does) arms it in every worker.

``orders health`` stays the probe for monitoring; this is the remedy.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery.signals import task_received, worker_ready
from celery.worker import state as worker_state

from worker.queue.app import LAST_SWEEP_KEY, QUEUE_ORDERS
from worker.redis_client import redis_client

log = structlog.get_logger(__name__)

STALLED_EXIT_CODE = 3
STALL_SWEEPS = 6
"""Sweep intervals without a fetched message (and without any sweep) before giving up."""
STALL_MIN_S = 20.0
HARD_EXIT_AFTER_S = 30.0


@dataclass(frozen=True, slots=True)
class Observation:
    """What the watchdog sees at one check (times in ``time.time()`` seconds)."""

    now: float
    last_received_at: float
    holding_tasks: int
    queue_length: int
    last_sweep_at: float | None


def stall_after_s(sweep_interval_s: float) -> float:
    """How long a worker may go without fetching while work waits."""
    return max(STALL_SWEEPS * sweep_interval_s, STALL_MIN_S)


def is_stalled(seen: Observation, *, limit_s: float) -> bool:
    """True when the worker is idle while work waits and nobody swept for ``limit_s``."""
    sweep_stale = seen.last_sweep_at is None or seen.now - seen.last_sweep_at > limit_s
    return (
        seen.holding_tasks == 0
        and seen.queue_length > 0
        and seen.now - seen.last_received_at > limit_s
        and sweep_stale
    )


class Watchdog:
    """The checking thread of one main worker process."""

    def __init__(self, broker_url: str, sweep_interval_s: float) -> None:
        self.redis = redis_client(broker_url)
        self.check_every_s = max(sweep_interval_s, 1.0)
        self.limit_s = stall_after_s(sweep_interval_s)
        self.last_received_at = time.time()
        self.stalled = False

    def received(self) -> None:
        self.last_received_at = time.time()

    def observe(self) -> Observation | None:
        """The current picture; None while Redis cannot be read (that is not a stall)."""
        try:
            queue_length = int(self.redis.llen(QUEUE_ORDERS))
            raw = self.redis.get(LAST_SWEEP_KEY)
        except (redis.RedisError, OSError):
            return None
        return Observation(
            now=time.time(),
            last_received_at=self.last_received_at,
            holding_tasks=len(worker_state.reserved_requests),
            queue_length=queue_length,
            last_sweep_at=float(raw) if raw else None,
        )

    def run(self) -> None:
        while not self.stalled:
            time.sleep(self.check_every_s)
            seen = self.observe()
            if seen is not None and is_stalled(seen, limit_s=self.limit_s):
                self.give_up(seen)

    def give_up(self, seen: Observation) -> None:
        """Ask for a warm shutdown with our exit code; exit hard if it does not come in time."""
        self.stalled = True
        log.error(
            "worker_not_consuming",
            idle_s=round(seen.now - seen.last_received_at),
            queue_length=seen.queue_length,
            exit_code=STALLED_EXIT_CODE,
        )
        # The consumer loop checks should_stop on every turn, and exits with it as its code.
        worker_state.should_stop = STALLED_EXIT_CODE  # type: ignore[assignment]  # celery-types: None only; celery takes an exit code
        time.sleep(HARD_EXIT_AFTER_S)
        os._exit(STALLED_EXIT_CODE)


_watchdog: Watchdog | None = None


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    """Start the watchdog in the main process of a worker, once it consumes."""
    global _watchdog
    from worker.settings import get_settings

    consumer = getattr(sender, "task_consumer", None)
    if consumer is not None and QUEUE_ORDERS not in {q.name for q in consumer.queues}:
        return  # e.g. a webhooks-only worker: an orders backlog is not its business
    broker_url = str(sender.app.conf.broker_url)
    _watchdog = Watchdog(broker_url, get_settings().sweep_interval_s)
    threading.Thread(target=_watchdog.run, name="stall-watchdog", daemon=True).start()


@task_received.connect
def _received(**_: Any) -> None:
    if _watchdog is not None:
        _watchdog.received()


def stalled() -> bool:
    """True once this process's watchdog gave up (``orders worker`` then exits non-zero)."""
    return _watchdog is not None and _watchdog.stalled
