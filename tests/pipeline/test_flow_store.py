"""The budget's Redis side and the gate against a real Redis: leases, fair shares, expiry,
the controller's turn, pauses, the probe, the rate ceiling, clocks."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import redis

from tests.helpers import wait_for
from worker.errors import PermanentError, RetryableError, UpstreamUnavailable
from worker.flow.breaker import BreakerState, Mode
from worker.flow.gate import Gate
from worker.flow.state import FlowConfig, FlowState, initial_state
from worker.flow.store import FlowStore, Report, flow_prefix
from worker.flow.window import bucket_of


def store_for(client: redis.Redis, ceiling: int, *, rps: float = 0.0) -> FlowStore:
    return FlowStore(client, flow_prefix("test"), FlowConfig(ceiling=ceiling, max_rps=rps))


def next_decision(store: FlowStore) -> FlowState:
    """The shared state after the next controller decision: the gate's syncer takes the turn
    (the only process here), so no second controller races it for the interval's totals."""
    version = store.read().version
    wait_for(lambda: store.read().version > version)
    return store.read()


def test_leases_share_the_limit_fairly_between_processes(redis_client):
    """Two processes wanting 10 each under a limit of 16 end at 8 and 8; the first one's
    early grab shrinks at its next sync."""
    store = store_for(redis_client, 16)
    a = store.sync("a", Report(demand=10, in_use=0, peak=0), ttl_s=5)
    b = store.sync("b", Report(demand=10, in_use=0, peak=0), ttl_s=5)
    assert (a.allot, b.allot) == (10, 6)
    a = store.sync("a", Report(demand=10, in_use=0, peak=0), ttl_s=5)
    b = store.sync("b", Report(demand=10, in_use=0, peak=0), ttl_s=5)
    assert (a.allot, b.allot) == (8, 8)
    assert store.in_flight(leased=True) == 16
    assert store.in_flight() == 0


def test_a_small_demand_leaves_the_rest_to_the_others(redis_client):
    store = store_for(redis_client, 16)
    store.sync("small", Report(demand=3, in_use=3, peak=3), ttl_s=5)
    big = store.sync("big", Report(demand=40, in_use=0, peak=0), ttl_s=5)
    assert big.allot == 13


def test_the_lease_of_a_dead_process_expires(redis_client):
    """Nobody renews it: after its time-to-live its permits are free again."""
    store = store_for(redis_client, 8)
    store.sync("dead", Report(demand=8, in_use=8, peak=8), ttl_s=0.3)
    assert store.sync("live", Report(demand=8, in_use=0, peak=0), ttl_s=5).allot == 0
    wait_for(lambda: store.sync("live", Report(demand=8, in_use=0, peak=0), ttl_s=5).allot == 8)


def test_a_host_clock_30_s_fast_changes_nothing(redis_client, monkeypatch):
    """Every time in the budget is Redis's: a process whose clock runs 30 s ahead neither
    expires the others' leases nor sees a pause end early."""
    store = store_for(redis_client, 8)
    store.sync("honest", Report(demand=4, in_use=4, peak=4), ttl_s=5)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 30)
    fast = store.sync("fast", Report(demand=8, in_use=0, peak=0), ttl_s=5)
    assert fast.allot == 4
    state = store.read()
    store.write(type(state)(state.loss, state.latency, paused_until=store.now_s() + 20))
    assert store.sync("fast", Report(demand=8, in_use=0, peak=0), ttl_s=5).paused_s > 19


def test_one_controller_turn_per_interval_fleet_wide(redis_client):
    store = store_for(redis_client, 8)
    turns = [
        store.sync(f"p{i}", Report(demand=1, in_use=0, peak=0), ttl_s=5).turn for i in range(6)
    ]
    assert turns.count(True) == 1
    # The next interval's turn comes (to whoever syncs then).
    wait_for(lambda: store.sync("p9", Report(demand=1, in_use=0, peak=0), ttl_s=5).turn)


def _hammer(redis_url: str, calls: int, out: multiprocessing.Queue) -> None:
    client = redis.Redis.from_url(redis_url)
    gate = Gate(store_for(client, 5), ttl_s=3)
    errors: list[BaseException] = []

    def one() -> None:
        now = client.incr("test:concurrent")
        client.set("test:peak", max(int(client.get("test:peak") or 0), now))
        time.sleep(0.005)
        client.decr("test:concurrent")

    def worker() -> None:
        try:
            for _ in range(calls):
                gate.call(one)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gate.close()
    out.put(len(errors))


def test_the_ceiling_holds_across_processes_and_threads(redis_url):
    """Four processes of eight threads each never have more than the ceiling of 5 calls out."""
    client = redis.Redis.from_url(redis_url)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(redis_url, 15, out)) for _ in range(4)]
    for p in procs:
        p.start()
    failures = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert failures == [0, 0, 0, 0]
    assert 1 <= int(client.get("test:peak")) <= 5


def test_a_short_refusal_spares_the_budget_and_pauses_nobody(redis_client):
    """A 429 with Retry-After 1 becomes UpstreamUnavailable (no retry budget spent); the
    fleet is not paused by it."""
    store = store_for(redis_client, 8)
    gate = Gate(store, ttl_s=3)

    def refused() -> None:
        raise RetryableError("upstream_429", status_code=429, retry_after_s=1.0)

    with pytest.raises(UpstreamUnavailable) as caught:
        gate.call(refused)
    assert caught.value.reason == "upstream_429"
    wait_for(lambda: store.stats().get("dropped") == 1)  # the refusal reached the fleet
    assert next_decision(store).paused_until == 0.0
    assert gate.call(lambda: "fine") == "fine"
    assert store.stats()["dropped"] == 1
    gate.close()


def test_a_long_retry_after_pauses_the_fleet(redis_client):
    store = store_for(redis_client, 8)
    gate = Gate(store, ttl_s=3)

    def refused() -> None:
        raise RetryableError("upstream_503", status_code=503, retry_after_s=30.0)

    with pytest.raises(UpstreamUnavailable):
        gate.call(refused)
    wait_for(lambda: store.read().paused_until > 0)
    gate.sync()
    with pytest.raises(UpstreamUnavailable) as paused:
        gate.call(lambda: None)
    assert paused.value.reason == "upstream_paused"
    gate.close()


def open_breaker(store: FlowStore, epoch: int = 1) -> None:
    state = initial_state(store.cfg)
    store.write(
        type(state)(state.loss, state.latency, BreakerState(Mode.OPEN, since=0.0, epoch=epoch))
    )


def test_only_a_2xx_probe_half_opens_and_one_probe_per_interval(redis_client):
    """A probe answered 404 (an endpoint the upstream does not have) keeps it open; the next
    probe slot comes a second later; a probe's 2xx half-opens it."""
    store = store_for(redis_client, 8)
    open_breaker(store)
    gate = Gate(store, ttl_s=3)
    gate.sync()
    with pytest.raises(UpstreamUnavailable):
        gate.call(lambda: None)

    def not_found() -> None:
        raise PermanentError("upstream_404", status_code=404)

    assert gate.probe([not_found]) is False
    assert gate.probe([lambda: None]) is False  # the slot is taken for this interval
    assert next_decision(store).breaker.mode is Mode.OPEN
    wait_for(lambda: gate.probe([lambda: None]), timeout_s=3)
    wait_for(lambda: store.read().breaker.mode is Mode.HALF_OPEN)
    gate.close()


def test_a_failure_of_a_call_admitted_before_the_breaker_opened_spends_no_budget(redis_client):
    """Its epoch is older: it counts for nothing and its order waits for free."""
    store = store_for(redis_client, 8)
    gate = Gate(store, ttl_s=3)
    gate.sync()
    started = threading.Event()
    release = threading.Event()
    seen: list[BaseException] = []

    def slow_failure() -> None:
        started.set()
        release.wait(5)
        raise RetryableError("upstream_502", status_code=502)

    def run() -> None:
        try:
            gate.call(slow_failure)
        except BaseException as exc:
            seen.append(exc)

    t = threading.Thread(target=run)
    t.start()
    started.wait(5)
    open_breaker(store, epoch=1)
    gate.sync()
    release.set()
    t.join(5)
    assert isinstance(seen[0], UpstreamUnavailable)
    assert seen[0].reason == "upstream_unavailable"
    gate.close()


def test_the_rate_ceiling_spaces_calls(redis_client):
    """At 20 calls/s, 1.5 s of asking gets about 30 calls (+ a 100 ms burst)."""
    store = store_for(redis_client, 1000, rps=20)
    gate = Gate(store, ttl_s=3)
    done = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            gate.call(lambda: None)
            done += 1
        except UpstreamUnavailable:
            break
    assert 20 <= done <= 40
    gate.close()


def test_a_call_longer_than_the_lease_keeps_its_permit(redis_client):
    """The syncer renews the lease while the call lasts."""
    store = store_for(redis_client, 4)
    gate = Gate(store, ttl_s=0.5, sync_interval_s=0.1)
    seen: list[int] = []

    def long_call() -> None:
        time.sleep(1.2)  # the call itself: it outlasts its lease (0.5 s) twice over
        seen.append(store.in_flight())

    gate.call(long_call)
    assert seen and seen[0] >= 1
    gate.close()


def test_too_few_answers_carry_over_until_the_latency_rule_can_judge(redis_client):
    """A slow upstream at a low limit answers a handful of calls an interval: they are kept
    for the next interval instead of dropped, so the latency rule gets its verdict (a fleet at
    the minimum of a 200 ms upstream once waited for one for ever)."""
    store = store_for(redis_client, 64)
    slow = f"b{bucket_of(0.2)}"
    report = Report(demand=4, in_use=4, peak=4, had_ok=True, fields={"ok": 6, slow: 6})
    for _ in range(2):
        store.sync("p", report, ttl_s=5)
        state = store.control()
        assert state is not None and state.latency.baseline_s == 0.0  # 6, then 12: too few
    store.sync("p", report, ttl_s=5)
    state = store.control()
    assert state is not None
    assert state.latency.baseline_s == pytest.approx(0.2, rel=0.1)  # 18 answers: judged
    store.sync("p", Report(demand=4, in_use=4, peak=4, had_ok=True, fields={"ok": 1}), ttl_s=5)
    assert "lat_carry" not in {k.decode() for k in redis_client.hkeys(store.totals_key)}
