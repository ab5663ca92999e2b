"""The pure outcome decisions of ``worker/pipeline/outcomes.py``: no database, no network."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from schemas.upstream_responses import LimioOrderObject, PreviewResponse, SubmitResponse
from worker.errors import (
    AmbiguousError,
    AuthError,
    PermanentError,
    RetryableError,
    UpstreamError,
)
from worker.models import Order
from worker.pipeline.backoff import RetryPolicy
from worker.pipeline.outcomes import (
    Decision,
    Timing,
    on_failure,
    on_follow,
    on_preview_ok,
    on_submit_ok,
    upstream_fields,
)
from worker.states import Status

S = Status
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TIMING = Timing(
    policy=RetryPolicy(max_attempts=3, max_age_s=3600.0, base_s=1.0, cap_s=10.0),
    countdown_max_s=30.0,
    enqueue_grace_s=30.0,
    follow_interval_s=2.0,
    follow_max_age_s=600.0,
    reconcile_delay_s=5.0,
)


def _order(**fields: object) -> Order:
    values: dict[str, object] = {
        "id": "ord_1",
        "failures": 0,
        "budget_from": NOW - timedelta(seconds=10),
        "submitted_at": None,
        "updated_at": NOW - timedelta(seconds=10),
    }
    values.update(fields)
    return Order(**values)


def _fail(error: UpstreamError, order: Order | None = None) -> Decision:
    return on_failure(
        order or _order(),
        error,
        frm=S.SUBMITTING,
        retry_to=S.PREVIEWED,
        now=NOW,
        timing=TIMING,
        rand=random.Random(1),
    )


def test_ambiguous_submit_waits_for_reconciliation_not_a_resubmit():
    decision = _fail(AmbiguousError("submit_timeout", "ReadTimeout"))
    move = decision.move
    assert (move.frm, move.to, move.reason) == (S.SUBMITTING, S.SUBMIT_UNKNOWN, "submit_timeout")
    assert move.values["due_at"] == NOW + timedelta(seconds=5)
    assert move.values["lease_owner"] is None and decision.requeue_in_s is None


def test_permanent_error_rejects_with_its_message_and_status():
    move = _fail(PermanentError("upstream_400", "bad offer", status_code=400)).move
    assert (move.to, move.reason, move.message, move.status_code) == (
        S.REJECTED,
        "upstream_400",
        "bad offer",
        400,
    )
    assert move.values["due_at"] is None


def test_auth_error_fails_without_spending_the_retry_budget():
    move = _fail(AuthError("upstream_auth", "refused", status_code=401)).move
    assert (move.to, move.reason) == (S.FAILED, "upstream_auth")
    assert "failures" not in move.values


def test_transient_error_retries_with_a_countdown_when_short():
    decision = _fail(RetryableError("upstream_502", "bad gateway", status_code=502))
    move = decision.move
    assert (move.to, move.values["failures"]) == (S.PREVIEWED, 1)
    assert decision.requeue_in_s is not None and 0 <= decision.requeue_in_s <= 1.0
    # Due for the dispatcher at the retry time; the countdown tick only wakes a pass then.
    assert move.values["due_at"] == move.values["next_attempt_at"]


def test_wait_above_the_countdown_cap_is_left_to_the_database():
    """Invariant 4: a ``Retry-After`` past the cap gives no countdown; ``due_at`` is the time."""
    decision = _fail(RetryableError("upstream_503", "busy", retry_after_s=120.0))
    assert decision.requeue_in_s is None
    values = decision.move.values
    assert values["next_attempt_at"] == values["due_at"] == NOW + timedelta(seconds=120)


def test_transient_error_fails_once_the_budget_is_spent():
    move = _fail(RetryableError("upstream_502", "x"), _order(failures=2)).move
    assert (move.to, move.reason, move.values["failures"]) == (S.FAILED, "upstream_502", 3)


def test_transient_error_fails_when_the_wait_outlives_the_max_age():
    old = _order(budget_from=NOW - timedelta(seconds=3590))
    move = _fail(RetryableError("upstream_503", "x", retry_after_s=60.0), old).move
    assert move.to == S.FAILED


def test_preview_ok_goes_on_to_submitting_through_previewed_keeping_the_answer_as_sent():
    preview = PreviewResponse.model_validate({"preview": {"orderNumber": "O-1", "x": [1]}})
    lease_until = NOW + timedelta(minutes=2)
    move = on_preview_ok(_order(), preview, lease_until=lease_until).move
    assert (move.frm, move.via, move.to) == (S.PREVIEWING, S.PREVIEWED, S.SUBMITTING)
    assert move.values["preview"] == {"preview": {"orderNumber": "O-1", "x": [1]}}
    assert move.values["due_at"] == lease_until


@pytest.mark.parametrize(
    ("status", "to"),
    [
        ("complete", S.COMPLETE),
        ("submitted", S.SUBMITTED),
        ("failed", S.FAILED),
        (None, S.SUBMITTED),
    ],
)
def test_submit_answer_status_decides_the_next_state(status: str | None, to: Status):
    answer = SubmitResponse.model_validate({"id": "order-9", "status": status, "owner": "id-1"})
    decision = on_submit_ok(_order(), answer, frm=S.SUBMITTING, now=NOW, timing=TIMING)
    move = decision.move
    assert move.to == to
    assert (move.values["upstream_id"], move.values["upstream_owner"]) == ("order-9", "id-1")
    assert move.values["submitted_at"] == NOW
    if to is S.SUBMITTED:
        assert decision.requeue_in_s == TIMING.follow_interval_s
    else:
        assert decision.requeue_in_s is None and move.values["due_at"] is None
    if to is S.FAILED:
        assert move.reason == "upstream_failed"


def _submitted(age_s: float) -> Order:
    return _order(submitted_at=NOW - timedelta(seconds=age_s), upstream_id="order-9")


def test_follow_reads_the_stored_objects_order_state():
    seen = LimioOrderObject.model_validate({"id": "order-9", "orderState": "complete"})
    move = on_follow(_submitted(5), seen, now=NOW, timing=TIMING).move
    assert (move.frm, move.to, move.values["upstream_status"]) == (
        S.SUBMITTED,
        S.COMPLETE,
        "complete",
    )
    assert "upstream_id" not in move.values  # the id we submitted stays the id we follow


def test_follow_sees_an_upstream_failure():
    seen = LimioOrderObject.model_validate({"id": "order-9", "orderState": "failed"})
    move = on_follow(_submitted(5), seen, now=NOW, timing=TIMING).move
    assert (move.to, move.reason) == (S.FAILED, "upstream_failed")


def test_follow_looks_again_later_after_an_error_honouring_retry_after():
    error = RetryableError("upstream_503", "busy", retry_after_s=7.0)
    decision = on_follow(_submitted(5), error, now=NOW, timing=TIMING)
    assert (decision.move.frm, decision.move.to) == (S.SUBMITTED, S.SUBMITTED)
    assert decision.requeue_in_s == 7.0


def test_follow_times_out_past_the_max_age():
    seen = LimioOrderObject.model_validate({"id": "order-9", "orderState": "submitted"})
    move = on_follow(_submitted(601), seen, now=NOW, timing=TIMING).move
    assert (move.to, move.reason) == (S.FAILED, "follow_timeout")


def test_upstream_fields_from_a_submit_answer_and_an_object():
    answer = SubmitResponse.model_validate({"id": "o", "order_reference": 12, "status": "x"})
    assert upstream_fields(answer) == {
        "upstream_id": "o",
        "upstream_reference": "12",
        "upstream_status": "x",
    }
    stored = LimioOrderObject.model_validate({"id": "o", "orderState": "submitted"})
    assert upstream_fields(stored)["upstream_status"] == "submitted"
