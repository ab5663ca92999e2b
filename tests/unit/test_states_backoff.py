"""Pure decisions: the state machine and retry timing."""

from __future__ import annotations

import random

import pytest

from worker.pipeline.backoff import RetryPolicy, backoff_delay_s, decide_retry
from worker.states import ALLOWED, TERMINAL, Status, can_move, check_move, upstream_status_outcome

S = Status


def test_terminal_states_have_no_way_out():
    """complete, rejected and cancelled are final; failed only re-enters by an operator retry."""
    for state in TERMINAL - {S.FAILED}:
        assert ALLOWED[state] == frozenset()
    assert ALLOWED[S.FAILED] == {S.RECEIVED, S.PREVIEWED, S.SUBMITTED}


def test_submit_cannot_be_skipped_or_repeated_blindly():
    """Only ``submitting`` reaches submitted/complete; ``submit_unknown`` never re-submits."""
    assert not can_move(S.RECEIVED, S.SUBMITTING)
    assert not can_move(S.SUBMIT_UNKNOWN, S.SUBMITTING)
    assert not can_move(S.PREVIEWED, S.COMPLETE)
    with pytest.raises(ValueError, match="illegal transition"):
        check_move(S.COMPLETE, S.RECEIVED)


def test_cancel_only_before_submit():
    """Cancellation is allowed from received and previewed, not once submitting began."""
    assert can_move(S.RECEIVED, S.CANCELLED) and can_move(S.PREVIEWED, S.CANCELLED)
    assert not can_move(S.SUBMITTING, S.CANCELLED) and not can_move(S.SUBMITTED, S.CANCELLED)
    assert not can_move(S.SUBMIT_UNKNOWN, S.CANCELLED)


def test_resting_orders_only_fail_through_a_step():
    """Nothing fails an order that is only waiting: failures come from a step or a follow-up."""
    for resting in (S.RECEIVED, S.PREVIEWED, S.SUBMIT_UNKNOWN):
        assert not can_move(resting, S.FAILED)
    assert can_move(S.PREVIEWING, S.FAILED) and can_move(S.SUBMITTING, S.FAILED)
    assert can_move(S.SUBMITTED, S.FAILED)


@pytest.mark.parametrize(
    ("upstream", "ours"),
    [
        ("complete", S.COMPLETE),
        ("COMPLETE", S.COMPLETE),
        ("submitted", S.SUBMITTED),
        ("failed", S.FAILED),
        ("weird-new-state", S.SUBMITTED),
        (None, S.SUBMITTED),
    ],
)
def test_upstream_status_is_an_open_set(upstream, ours):
    """Unknown upstream statuses keep the order followed rather than guessed complete."""
    assert upstream_status_outcome(upstream) is ours


def test_full_jitter_stays_under_the_exponential_ceiling():
    """Delays are uniform in [0, min(cap, base * 2**(n-1))]."""
    rand = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(30.0, 1.0 * 2 ** (attempt - 1))
        delays = [backoff_delay_s(attempt, base_s=1.0, cap_s=30.0, rand=rand) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8


def test_retry_after_is_a_floor():
    """A Retry-After larger than the jittered delay wins."""
    assert (
        backoff_delay_s(1, base_s=0.1, cap_s=1.0, retry_after_s=7.0, rand=random.Random(0)) == 7.0
    )


def test_budget_in_attempts_and_age():
    """Giving up happens at max attempts, or when the next wait would pass the max age."""
    policy = RetryPolicy(max_attempts=3, max_age_s=100.0, base_s=1.0, cap_s=10.0)
    assert not decide_retry(policy, 2, age_s=0.0).give_up
    assert decide_retry(policy, 3, age_s=0.0).give_up
    assert decide_retry(policy, 1, age_s=99.0, retry_after_s=5.0).give_up
