"""The one way the product opens Redis: timeouts, health checks, retry, one pool per process.

Every part (worker runtime, API, watchdog, console, CLI) asks :func:`redis_client` for a client.
Clients of one server, profile and name share one connection pool per process; a forked child
builds its own (sockets must not cross processes). ``close()`` on such a client releases
nothing: the pool lives as long as the process (:func:`close_pools` for tests and shutdown).

Two profiles:

* ``work``: the traffic of the pipeline, the dispatcher, the budget, the token. Socket timeout
  5 s (every command we send is O(1) or a short script), connect 2 s, a health check of a
  connection idle for 10 s (a pooled connection to a restarted Redis is noticed before use),
  and two retries with jittered backoff on a dropped or refused connection. Not on timeouts:
  a slow Redis gets no doubled load, and a script that timed out may have run.
* ``check``: readiness, ``orders health``, the console's live figures. One second for
  everything and no retry: a check reports what it sees now, quickly.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Literal

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

Profile = Literal["work", "check"]


@dataclass(frozen=True, slots=True)
class _Timeouts:
    socket_s: float
    connect_s: float
    health_check_s: int
    retries: int


PROFILES: dict[Profile, _Timeouts] = {
    "work": _Timeouts(socket_s=5.0, connect_s=2.0, health_check_s=10, retries=2),
    "check": _Timeouts(socket_s=1.0, connect_s=1.0, health_check_s=0, retries=0),
}

_lock = threading.Lock()
_pools: dict[tuple[str, Profile, str | None], redis.ConnectionPool] = {}
_pid = os.getpid()


def redis_client(url: str, *, profile: Profile = "work", name: str | None = None) -> redis.Redis:
    """A client of ``url`` over this process's pool for ``profile`` (and ``name``: the
    connections' ``CLIENT SETNAME``, its own pool so that the server can count them)."""
    return redis.Redis(connection_pool=_pool(url, profile, name))


def _pool(url: str, profile: Profile, name: str | None) -> redis.ConnectionPool:
    global _pid
    key = (url, profile, name)
    with _lock:
        if _pid != os.getpid():  # a forked child: the parent's sockets are not ours
            _pools.clear()
            _pid = os.getpid()
        pool = _pools.get(key)
        if pool is None:
            t = PROFILES[profile]
            retry = Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=0.5),
                t.retries,
                supported_errors=(RedisConnectionError,),
            )
            pool = redis.ConnectionPool.from_url(
                url,
                socket_timeout=t.socket_s,
                socket_connect_timeout=t.connect_s,
                health_check_interval=t.health_check_s,
                retry=retry,
                client_name=name,
            )
            _pools[key] = pool
        return pool


def close_pools(url: str | None = None) -> None:
    """Disconnect this process's pools (of ``url`` only, when given)."""
    with _lock:
        for key in [k for k in _pools if url is None or k[0] == url]:
            _pools.pop(key).disconnect()
