"""The pure decisions of the call budget: signals, the learned limit, the breaker, the state."""

from __future__ import annotations

import math

from worker.errors import AmbiguousError, PermanentError, RetryableError
from worker.flow.breaker import BreakerConfig, BreakerState, Mode, next_breaker
from worker.flow.limit import LimitConfig, LimitState, initial_limit, next_limit
from worker.flow.state import FlowConfig, FlowState, admission, observe
from worker.flow.window import MAX_PAUSE_S, Signal, Window, clamp_retry_after_s, signal_of

CFG = LimitConfig(ceiling=256)


def ok(n: int, latency_s: float = 0.05, peak: int = 0) -> Window:
    return Window(ok=n, latency_sum_s=n * latency_s, peak_in_flight=peak)


def test_signals_come_from_status_codes_and_error_types():
    """429/503 are pushback, timeouts are slow, other 5xx and transport errors failures."""
    assert signal_of(None) is Signal.OK
    assert signal_of(RetryableError("upstream_429", status_code=429)) is Signal.DROPPED
    assert signal_of(RetryableError("upstream_503", status_code=503)) is Signal.DROPPED
    assert signal_of(RetryableError("upstream_timeout")) is Signal.SLOW
    assert signal_of(RetryableError("upstream_502", status_code=502)) is Signal.FAILED
    assert signal_of(RetryableError("upstream_connect")) is Signal.FAILED
    assert signal_of(AmbiguousError("submit_disconnect")) is Signal.FAILED
    assert signal_of(PermanentError("upstream_400", status_code=400)) is Signal.OK


def test_absurd_retry_after_values_are_clamped():
    """inf and 1e12 pause at most a day; NaN and negatives are ignored or zero."""
    assert clamp_retry_after_s(math.inf) == MAX_PAUSE_S
    assert clamp_retry_after_s(1e12) == MAX_PAUSE_S
    assert clamp_retry_after_s(math.nan) is None
    assert clamp_retry_after_s(-5) == 0.0
    assert clamp_retry_after_s(3) == 3


def test_a_fresh_fleet_starts_low_and_doubles_while_the_upstream_keeps_up():
    state = initial_limit(CFG)
    assert state.limit == 32
    state = next_limit(state, ok(40, peak=30), now=1.0, cfg=CFG)
    assert state.limit == 64
    # Not busy (few in flight compared with the limit): no evidence, no growth.
    assert next_limit(state, ok(5, peak=3), now=2.0, cfg=CFG).limit == 64


def test_a_refusal_cuts_to_below_the_concurrency_that_was_refused():
    """Refused at position 17: the capacity is 16 or less, whatever the limit was."""
    state = LimitState(limit=200.0, changed_at=0.0, floor_s=0.05)
    after = next_limit(state, Window(ok=10, dropped=5, refused_at=17), now=1.0, cfg=CFG)
    assert after.limit == 16
    assert after.dropped_at_limit == 17


def test_one_change_per_interval():
    """Answers to calls sent under the old limit do not shrink it twice."""
    state = LimitState(limit=90.0, changed_at=1.0, floor_s=0.05)
    after = next_limit(state, Window(dropped=3, refused_at=95), now=1.1, cfg=CFG)
    assert after.limit == 90
    # Unless the limit still allows the concurrency that was just refused.
    refused = next_limit(state, Window(dropped=3, refused_at=40), now=1.1, cfg=CFG)
    assert refused.limit == 39


def test_rising_latency_shrinks_the_limit():
    state = LimitState(limit=100.0, changed_at=0.0, floor_s=0.05)
    after = next_limit(state, ok(50, latency_s=0.2, peak=90), now=1.0, cfg=CFG)
    assert after.limit == 90


def test_growth_past_the_last_refusal_is_slow():
    """Back up quickly to 0.9 x the refused level, then one more permit per probe interval."""
    state = LimitState(limit=10.0, changed_at=0.0, floor_s=0.05, dropped_at_limit=20.0)
    grown = next_limit(state, ok(20, peak=10), now=1.0, cfg=CFG)
    assert 10 < grown.limit <= 18
    at_level = LimitState(limit=18.0, changed_at=0.0, floor_s=0.05, dropped_at_limit=20.0)
    assert next_limit(at_level, ok(20, peak=18), now=1.0, cfg=CFG).limit == 18
    later = next_limit(at_level, ok(20, peak=18), now=CFG.probe_interval_s, cfg=CFG)
    assert later.limit == 19


def test_never_above_the_ceiling_nor_below_the_minimum():
    cfg = LimitConfig(ceiling=16)
    state = LimitState(limit=16.0)
    assert next_limit(state, ok(20, peak=16), now=1.0, cfg=cfg).limit == 16
    low = LimitState(limit=1.0)
    assert next_limit(low, Window(dropped=1, refused_at=1), now=1.0, cfg=cfg).limit == 1


BR = BreakerConfig()


def test_most_calls_failing_opens_the_breaker():
    state = next_breaker(BreakerState(), Window(ok=5, failed=25), now=1.0, cfg=BR)
    assert state.mode is Mode.OPEN


def test_an_outage_after_a_busy_healthy_second_opens_it_within_tens_of_calls():
    """Hundreds of recent successes do not hide 20 failures in a row."""
    state = BreakerState()
    for t in range(10):
        state = next_breaker(state, Window(ok=40), now=t * 0.1, cfg=BR)
    state = next_breaker(state, Window(ok=3, failed=8), now=1.0, cfg=BR)
    state = next_breaker(state, Window(failed=10), now=1.1, cfg=BR)
    assert state.mode is Mode.CLOSED
    state = next_breaker(state, Window(failed=2), now=1.2, cfg=BR)
    assert state.mode is Mode.OPEN


def test_one_orders_repeated_502s_do_not_open_it():
    """A few failures among many successes, or too few failures: closed."""
    state = BreakerState()
    for t in range(10):
        state = next_breaker(state, Window(ok=30, failed=1), now=t * 0.1, cfg=BR)
    assert state.mode is Mode.CLOSED
    lone = next_breaker(BreakerState(), Window(failed=12), now=1.0, cfg=BR)
    assert lone.mode is Mode.CLOSED


def test_a_probe_half_opens_and_a_quiet_ramp_closes():
    opened = BreakerState(Mode.OPEN, since=0.0, window_start=0.0)
    assert next_breaker(opened, Window(failed=1), now=1.0, cfg=BR).mode is Mode.OPEN
    half = next_breaker(opened, Window(ok=1), now=2.0, cfg=BR)
    assert half.mode is Mode.HALF_OPEN
    # A few failures after the probe may be orders' own payloads: still half-open; as many
    # failures as opened it, dominating, reopen it.
    assert next_breaker(half, Window(failed=3, ok=1), now=2.5, cfg=BR).mode is Mode.HALF_OPEN
    many = Window(failed=BR.min_failures, ok=1)
    assert next_breaker(half, many, now=2.5, cfg=BR).mode is Mode.OPEN
    assert next_breaker(half, Window(ok=20), now=2.0 + BR.ramp_s, cfg=BR).mode is Mode.CLOSED


def test_recovery_ramps_from_a_small_limit():
    """Probes succeed: the fleet restarts at a couple of calls, not at its old limit."""
    cfg = FlowConfig(LimitConfig(ceiling=256))
    state = FlowState(LimitState(limit=128.0), BreakerState(Mode.OPEN, since=0.0))
    after = observe(state, Window(ok=1, latency_sum_s=0.05, peak_in_flight=1), 3.0, cfg)
    assert after.breaker.mode is Mode.HALF_OPEN
    assert after.limit.limit == 2
    assert after.limit.dropped_at_limit == 128


def test_retry_after_pauses_everyone_and_admission_follows_the_state():
    cfg = FlowConfig(LimitConfig(ceiling=16))
    state = observe(FlowState(LimitState(16.0)), Window(dropped=1, retry_after_s=3.0), 10.0, cfg)
    assert state.paused_until == 13.0
    assert admission(state, 11.0).kind == "wait"
    assert admission(state, 13.5).kind == "go"
    opened = FlowState(LimitState(16.0), BreakerState(Mode.OPEN))
    assert admission(opened, 1.0).kind == "probe"


def test_state_round_trips_through_the_hash():
    cfg = FlowConfig(LimitConfig(ceiling=16))
    state = FlowState(LimitState(12.5, 3.0, 0.05, 17.0), BreakerState(Mode.HALF_OPEN, 2.0), 9.0, 7)
    assert FlowState.from_fields(state.to_fields(), cfg) == state
    assert FlowState.from_fields({}, cfg).limit.limit == 16
