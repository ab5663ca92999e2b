"""The permit script and the gate against a real Redis: ceiling, expiry, pause, probes, rate."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import redis

from worker.errors import RetryableError, UpstreamUnavailable
from worker.flow.breaker import BreakerState, Mode
from worker.flow.gate import Gate
from worker.flow.limit import LimitConfig, LimitState
from worker.flow.state import FlowConfig, FlowState
from worker.flow.store import FlowStore


def store_for(client: redis.Redis, ceiling: int, *, rps: float = 0.0) -> FlowStore:
    return FlowStore(client, "orders:flow:test", FlowConfig(LimitConfig(ceiling), max_rps=rps))


def set_state(store: FlowStore, state: FlowState) -> None:
    store.redis.hset(store.state_key, mapping=state.to_fields())


def test_grants_stop_at_the_ceiling_and_resume_after_release(redis_client):
    store = store_for(redis_client, 4)
    set_state(store, FlowState(LimitState(100.0)))
    now = time.time()
    first = store.acquire(3, prefix="a:", ttl_s=30, now_s=now)
    second = store.acquire(3, prefix="b:", ttl_s=30, now_s=now)
    assert (first.count, first.first_position) == (3, 1)
    assert (second.count, second.first_position) == (1, 4)
    assert store.acquire(1, prefix="c:", ttl_s=30, now_s=now).count == 0
    store.release(["a:1", "a:2"])
    assert store.acquire(5, prefix="d:", ttl_s=30, now_s=now).count == 2


def test_the_learned_limit_binds_below_the_ceiling(redis_client):
    store = store_for(redis_client, 64)
    set_state(store, FlowState(LimitState(5.7)))
    assert store.acquire(10, prefix="a:", ttl_s=30, now_s=time.time()).count == 5


def test_permits_of_a_dead_holder_expire(redis_client):
    """Nobody releases them: after their time-to-live they are free again."""
    store = store_for(redis_client, 2)
    set_state(store, FlowState(LimitState(2.0)))
    now = time.time()
    assert store.acquire(2, prefix="dead:", ttl_s=5, now_s=now).count == 2
    assert store.acquire(1, prefix="x:", ttl_s=5, now_s=now + 4.9).count == 0
    assert store.acquire(2, prefix="y:", ttl_s=5, now_s=now + 5.1).count == 2


def test_a_pause_grants_nothing_and_says_how_long(redis_client):
    store = store_for(redis_client, 8)
    now = time.time()
    set_state(store, FlowState(LimitState(8.0), paused_until=now + 3))
    grant = store.acquire(1, prefix="a:", ttl_s=30, now_s=now)
    assert (grant.count, grant.code) == (0, 1)
    assert 2.9 <= grant.wait_s <= 3.01  # whole milliseconds, rounded up


def test_an_open_breaker_lets_one_probe_per_interval_through(redis_client):
    store = store_for(redis_client, 8)
    set_state(store, FlowState(LimitState(8.0), BreakerState(Mode.OPEN)))
    now = time.time()
    grants = [store.acquire(4, prefix=f"p{i}:", ttl_s=30, now_s=now) for i in range(5)]
    assert [g.count for g in grants] == [1, 0, 0, 0, 0]
    assert {g.code for g in grants[1:]} == {2}


def test_the_rate_ceiling_spaces_calls(redis_client):
    """At 20 calls/s, 2 s of asking gets about 40 permits (+ a 100 ms burst)."""
    store = store_for(redis_client, 1000, rps=20)
    set_state(store, FlowState(LimitState(1000.0)))
    start = time.time()
    granted = 0
    for step in range(200):
        grant = store.acquire(5, prefix=f"r{step}:", ttl_s=30, now_s=start + step * 0.01)
        granted += grant.count
    assert 38 <= granted <= 43


def _hammer(url: str, rounds: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    client = redis.Redis.from_url(url)
    gate = Gate(store_for(client, 5), ttl_s=30, max_wait_s=30)
    peak = 0

    def call() -> None:
        nonlocal peak
        peak = max(peak, int(client.zcard("orders:flow:test:permits")))
        time.sleep(0.002)

    threads = [
        threading.Thread(target=lambda: [gate.call(call) for _ in range(rounds)]) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gate.close()
    out.put(peak)


def test_ceiling_holds_across_processes_and_threads(redis_url):
    """Four processes of eight threads each never hold more than the ceiling of 5."""
    client = redis.Redis.from_url(redis_url)
    set_state(store_for(client, 5), FlowState(LimitState(5.0)))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(redis_url, 15, out)) for _ in range(4)]
    for p in procs:
        p.start()
    peaks = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert max(peaks) <= 5
    assert client.zcard("orders:flow:test:permits") == 0


def test_the_gate_spares_the_budget_of_pushback_and_reports_it(redis_client):
    """A 429 becomes UpstreamUnavailable (no retry budget spent) and pauses the fleet."""
    store = store_for(redis_client, 8)
    gate = Gate(store, ttl_s=30)

    def refused() -> None:
        raise RetryableError("upstream_429", status_code=429, retry_after_s=5.0)

    with pytest.raises(UpstreamUnavailable) as caught:
        gate.call(refused)
    assert caught.value.reason == "upstream_429"
    state = gate.report()
    assert state is not None and state.paused_until > time.time() + 4
    with pytest.raises(UpstreamUnavailable) as paused:
        gate.call(lambda: None)
    assert paused.value.reason == "upstream_paused"
    assert store.stats()["dropped"] == 1
    gate.close()


def test_permits_of_a_live_call_are_renewed(redis_client):
    """A call longer than the permit's life keeps its permit: its process renews it."""
    store = store_for(redis_client, 4)
    gate = Gate(store, ttl_s=0.5, report_interval_s=0.1)
    seen: list[int] = []

    def long_call() -> None:
        time.sleep(1.2)
        seen.append(store.in_flight())

    gate.call(long_call)
    assert seen == [1]
    assert store.in_flight() == 0
    gate.close()
