"""Per-process singletons of a worker: settings, Redis, token cache, upstream client, pipeline.

Built lazily on first use and rebuilt after a fork (connections must not cross processes).
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
from celery import Celery

from worker.batches import watch as batch_watch
from worker.embedded_redis import resolve_redis_url
from worker.flow.gate import Gate
from worker.flow.setup import build_gate
from worker.pipeline.run import Pipeline
from worker.pipeline.tail import Tail
from worker.queue.app import configure
from worker.queue.dispatcher import Dispatcher, build_dispatcher
from worker.redis_client import redis_client
from worker.settings import Settings, get_settings
from worker.upstream.client import UpstreamClient
from worker.upstream.shared import shared_upstream
from worker.upstream.token import TokenCache


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    celery: Celery
    tokens: TokenCache
    upstream: UpstreamClient
    executor: ThreadPoolExecutor
    pipeline: Pipeline
    gate: Gate
    dispatcher: Dispatcher
    tail: Tail = field(default_factory=Tail)
    """Where a run's last calls land while the process's next message starts."""
    name: str = ""
    """This process, as the dispatcher counts live worker processes."""

    def close(self) -> None:
        self.tail.join(self.settings.lease_s)
        self.gate.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.upstream.close()
        self.redis.close()


_runtime: Runtime | None = None
_pid: int | None = None


def build_runtime(settings: Settings, redis_url: str) -> Runtime:
    """Wire the process's objects together."""
    client = redis_client(redis_url)
    gate = build_gate(settings, client)
    tokens, upstream = shared_upstream(settings, client, gate=gate)
    # Threads, as the clients are blocking; sized so a whole chunk's calls go out in one round.
    executor = ThreadPoolExecutor(settings.http_concurrency, thread_name_prefix="upstream")
    pipeline = Pipeline(settings, upstream, executor, events=batch_watch.after_events, gate=gate)
    celery = configure(redis_url, settings)
    dispatcher = build_dispatcher(settings, client, celery, gate=gate)
    name = f"{socket.gethostname()}:{os.getpid()}"
    return Runtime(
        settings, client, celery, tokens, upstream, executor, pipeline, gate, dispatcher, name=name
    )


def get_runtime() -> Runtime:
    """This process's runtime, built on first use."""
    global _runtime, _pid
    if _runtime is None or _pid != os.getpid():
        settings = get_settings()
        _runtime = build_runtime(settings, resolve_redis_url(settings, start_if_missing=False))
        _pid = os.getpid()
    return _runtime


def peek_runtime() -> Runtime | None:
    """This process's runtime if it was built (never builds one)."""
    return _runtime if _runtime is not None and _pid == os.getpid() else None


def reset_runtime() -> None:
    """Drop this process's runtime (tests; after a fork)."""
    global _runtime, _pid
    if _runtime is not None and _pid == os.getpid():
        _runtime.close()
    _runtime = None
    _pid = None
