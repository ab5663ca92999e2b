"""The shared token cache on real Redis: one fetch per lifetime across many threads."""

from __future__ import annotations

import threading
import time

import pytest

from worker.errors import RetryableError
from worker.upstream.shared import token_key
from worker.upstream.token import TokenCache


def _counting_fetch(lifetime_s: float, delay_s: float = 0.05):  # type: ignore[no-untyped-def]
    calls: list[float] = []

    def fetch() -> tuple[str, float]:
        time.sleep(delay_s)
        calls.append(time.monotonic())
        return f"tok-{len(calls)}", lifetime_s

    return fetch, calls


def test_many_workers_fetch_about_one_token_per_lifetime(redis_client):
    """16 threads with their own caches (as processes would) over ~3 lifetimes: ~3-4 fetches."""
    fetch, calls = _counting_fetch(lifetime_s=1.0)
    caches = [TokenCache(redis_client, "t:key", fetch, margin_s=60) for _ in range(16)]
    stop = time.monotonic() + 3.0
    seen: set[str] = set()
    errors: list[Exception] = []

    def use(cache: TokenCache) -> None:
        while time.monotonic() < stop:
            try:
                seen.add(cache.get())
            except Exception as exc:
                errors.append(exc)
            time.sleep(0.005)

    threads = [threading.Thread(target=use, args=(c,)) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert 3 <= len(calls) <= 5, len(calls)
    assert len(seen) == len(calls)


def test_invalidate_removes_only_the_refused_token(redis_client):
    """A 401 on an old token does not throw away a newer one another worker fetched."""
    fetch, calls = _counting_fetch(lifetime_s=3600, delay_s=0)
    a = TokenCache(redis_client, "t:key", fetch)
    b = TokenCache(redis_client, "t:key", fetch)
    first = a.get()
    b.invalidate(first)
    second = b.get()
    assert second != first and len(calls) == 2
    a.invalidate(first)  # stale 401 seen late by a: must not drop ``second``
    assert a.get() == second and len(calls) == 2


def test_waiters_get_an_error_when_no_token_arrives(redis_client):
    """If the refresher holds the lock and never delivers, others fail retryably, not forever."""
    redis_client.set("t:key:lock", "someone-else", px=5000)
    fetch, _ = _counting_fetch(lifetime_s=3600)
    cache = TokenCache(redis_client, "t:key", fetch, lock_timeout_s=0.3)
    with pytest.raises(RetryableError):
        cache.get()


def test_refresh_lock_outlives_a_worst_case_token_fetch(runtime_factory, stub, redis_client):
    """While a token fetch hangs, its lock lives longer than the fetch's timeouts could last."""
    rt = runtime_factory()
    stub.script("token", [{"kind": "timeout", "hold_s": 1.0}])
    lock_key = token_key(rt.settings) + ":lock"
    outcome: list[object] = []

    def refresh() -> None:
        try:
            outcome.append(rt.tokens.get())
        except RetryableError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=refresh)
    thread.start()
    ttl_ms = -2
    deadline = time.monotonic() + 5
    while ttl_ms <= 0 and time.monotonic() < deadline:
        ttl_ms = redis_client.pttl(lock_key)
        time.sleep(0.01)
    thread.join()
    s = rt.settings
    worst_s = (
        s.upstream_pool_timeout_s
        + s.upstream_connect_timeout_s
        + s.upstream_write_timeout_s
        + s.upstream_read_timeout_s
    )
    assert ttl_ms / 1000 > worst_s - 1.0, (ttl_ms, worst_s)
    assert isinstance(outcome[0], RetryableError)  # the held fetch ended with the stub's 504
