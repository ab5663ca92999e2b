"""The dispatcher: the backlog waits in the database, the broker carries only what can start
soon, and what goes next is shared fairly between callers (design.md invariant 13).

A pass measures the ``orders`` queue in Redis, and when it is shorter than its target
(``ORDERS_DISPATCH_CHUNKS_PER_PROCESS`` chunks per live worker process) fills the free slots
with due orders, shared between the callers that have work by :func:`~worker.queue.fairshare.
shares` (oldest first within a caller), claimed by compare-and-set and published in chunks
that interleave the callers.

Passes run where work appears or frees room, in the processes a deployment already has: the
API after it commits orders (so a lone order leaves at once), a worker process after each
chunk, a countdown tick for short retry waits, and beat's sweep (which also rebuilds the list
of callers with work from the database, so a Redis flush loses nothing). One pass at a time
(a Redis lock); two at once would only overfill the queue a little, never take an order twice.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis
import structlog
from celery import Celery
from redis.exceptions import LockError

from worker.db import transaction
from worker.flow.gate import Gate
from worker.flow.setup import build_store
from worker.ids import utcnow
from worker.queue import backlog
from worker.queue.app import QUEUE_ORDERS
from worker.queue.enqueue import enqueue_orders
from worker.queue.fairshare import shares
from worker.settings import Settings

log = structlog.get_logger(__name__)

LOCK_KEY = "orders:dispatch:lock"
CALLERS_KEY = "orders:dispatch:callers"
"""Callers that may have work: added by whoever creates or reschedules work, rebuilt by the
sweep from the database (so losing it delays nothing longer than one sweep)."""
PROCS_KEY = "orders:dispatch:procs"
"""Worker processes seen lately (a sorted set scored by time): the queue's target scales with
them."""
PROC_TTL_S = 60.0
LOCK_TTL_S = 30.0
LOCK_WAIT_S = 1.0
ROTATE_KEY = "orders:dispatch:rotate"
# A chunk holds this many times a process's share of the upstream's limit: its calls keep
# the share busy while earlier answers are written (a chunk of exactly the share would leave
# its permits idle during each write and between chunks), and a newcomer still waits behind
# little.
CHUNK_SHARES = 3


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did: orders published, queue length before, its target (in messages)."""

    sent: int = 0
    depth: int = 0
    target: int = 0


def note_worker_process(client: redis.Redis, name: str) -> None:
    """Record that worker process ``name`` is alive (called as it starts and per task)."""
    client.zadd(PROCS_KEY, {name: time.time()})


def live_processes(client: redis.Redis) -> int:
    """Worker processes seen in the last ``PROC_TTL_S`` seconds."""
    cutoff = time.time() - PROC_TTL_S
    client.zremrangebyscore(PROCS_KEY, "-inf", cutoff)
    return int(client.zcard(PROCS_KEY))


def build_dispatcher(
    settings: Settings, client: redis.Redis, celery: Celery, *, gate: Gate | None = None
) -> Dispatcher:
    """The dispatcher of a process, worker or API alike: its chunks follow the upstream's
    learned limit (so a newcomer's orders wait behind little). ``gate``: this process's, when
    it calls the upstream (its last view of the limit, no round trip); without one, or before
    the gate's first look, the fleet's shared state is read from Redis."""
    store = build_store(settings, client)

    def allowance() -> int | None:
        seen = gate.allowance() if gate is not None else None
        if seen is not None:
            return seen
        return min(store.read().target, store.cfg.ceiling)

    return Dispatcher(settings, client, celery, allowance=allowance)


def interleave(groups: Iterable[list[str]]) -> list[str]:
    """One id of each group in turn: a chunk never holds one caller's run while others wait."""
    merged = itertools.zip_longest(*groups)
    return [i for row in merged for i in row if i is not None]


class Dispatcher:
    """Feeds the ``orders`` queue from the database backlog, fairly and boundedly.

    Args:
        settings: the chunk size, the queue target, the enqueue grace.
        client: Redis (the broker's server: the queue is measured there).
        celery: the app to publish with.
        allowance: upstream calls the fleet may have in flight now (the flow-control limit),
            or None when unknown; chunks shrink so that the orders held by workers stay
            close to what the upstream can take, which keeps a newcomer's wait short.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        celery: Celery,
        *,
        allowance: Callable[[], int | None] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.celery = celery
        self.allowance = allowance

    def run(self, *, callers: Iterable[str] = (), rebuild: bool = False) -> PassResult:
        """One pass (after waiting for a running one); ``callers`` have new work."""
        callers = list(callers)
        if callers:
            self.redis.sadd(CALLERS_KEY, *callers)
        lock = self.redis.lock(LOCK_KEY, timeout=LOCK_TTL_S, blocking_timeout=LOCK_WAIT_S)
        if not lock.acquire():
            log.info("dispatch_skipped", reason="another pass is running long")
            return PassResult()
        try:
            return self._pass(rebuild=rebuild)
        finally:
            try:
                lock.release()
            except LockError:
                log.warning("dispatch_lock_expired")

    def chunk_size(self, processes: int) -> int:
        """Orders per message: the configured chunk, smaller when the upstream is the limit."""
        size = self.settings.chunk_size
        limit = self.allowance() if self.allowance is not None else None
        if limit is not None:
            share = -(-CHUNK_SHARES * limit // max(processes, 1))
            size = min(size, max(2, share))
        return size

    def _pass(self, *, rebuild: bool) -> PassResult:
        processes = max(live_processes(self.redis), 1)
        chunk = self.chunk_size(processes)
        target = processes * self.settings.dispatch_chunks_per_process
        depth = int(self.redis.llen(QUEUE_ORDERS))
        free = (target - depth) * chunk
        if free <= 0 and not rebuild:
            return PassResult(0, depth, target)
        now = utcnow()
        with transaction(self.settings.database_url) as session:
            if rebuild or not self.redis.exists(CALLERS_KEY):
                active = backlog.callers_with_work(session)
                pipe = self.redis.pipeline()
                pipe.delete(CALLERS_KEY)
                if active:
                    pipe.sadd(CALLERS_KEY, *active)
                pipe.execute()
            else:
                members = self.redis.smembers(CALLERS_KEY)
                active = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
            if free <= 0:
                return PassResult(0, depth, target)
            due = {c: backlog.due_orders(session, c, now=now, limit=free) for c in active}
            idle = [
                c for c, ids in due.items() if not ids and not backlog.has_scheduled(session, c)
            ]
            rotate = int(self.redis.incr(ROTATE_KEY))
            wanted = {c: len(ids) for c, ids in due.items() if ids}
            weights = backlog.weights(session, wanted) if len(wanted) > 1 else {}
            share = shares(free, wanted, weights, rotate=rotate)
            chosen = interleave([due[c][: share[c]] for c in sorted(share)])
            claimed = set(
                backlog.claim(session, chosen, now=now, grace_s=self.settings.enqueue_grace_s)
            )
        if idle:
            self.redis.srem(CALLERS_KEY, *idle)
        ids = [i for i in chosen if i in claimed]
        if ids:
            enqueue_orders(self.celery, ids, chunk_size=chunk)
        return PassResult(len(ids), depth, target)
