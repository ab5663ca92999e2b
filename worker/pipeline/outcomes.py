"""What each upstream result does to an order: pure decisions, returning ``Move``s.

Nothing here touches the network or the database; the pipeline applies what it returns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.upstream_responses import (
    LimioOrderObject,
    OrderSummary,
    PreviewResponse,
    SubmitResponse,
)
from worker.errors import (
    AmbiguousError,
    AuthError,
    PermanentError,
    UpstreamError,
    UpstreamUnavailable,
)
from worker.models import ORDERS, OrderLike
from worker.pipeline.backoff import RetryDecision, RetryPolicy, decide_retry
from worker.repository import Move
from worker.states import Status, upstream_status_outcome

S = Status


@dataclass(frozen=True, slots=True)
class Timing:
    """The timing knobs the decisions need (from settings)."""

    policy: RetryPolicy
    countdown_max_s: float
    enqueue_grace_s: float
    follow_interval_s: float
    follow_max_age_s: float
    reconcile_delay_s: float


@dataclass(slots=True)
class Decision:
    """A move to apply, and when to run the order again (None: not by us)."""

    move: Move
    requeue_in_s: float | None = None


def _schedule(now: datetime, delay_s: float, timing: Timing) -> tuple[dict[str, Any], float | None]:
    """Columns for "try again in ``delay_s``", and the countdown of a dispatch tick if short.

    The order is due for the dispatcher at ``at`` either way; a short wait also gets a tick
    then (a broker countdown), a long one waits for the sweep (invariant 4).
    """
    at = now + timedelta(seconds=delay_s)
    # Invariant 4: only short waits ride the broker (as a dispatch tick); longer ones are
    # due_at alone, and the sweep dispatches them when due.
    countdown = delay_s if delay_s <= timing.countdown_max_s else None
    return {"next_attempt_at": at, "due_at": at, "lease_owner": None}, countdown


_DONE: dict[str, Any] = {"next_attempt_at": None, "due_at": None, "lease_owner": None}


def upstream_fields(answer: SubmitResponse | OrderSummary) -> dict[str, Any]:
    """Order columns from a submit answer or an upstream order (stored object or summary)."""
    fields = {
        "upstream_id": answer.id,
        "upstream_reference": answer.order_reference,
        "upstream_status": answer.state,
        "subscription_reference": answer.subscriptionReference,
        "upstream_owner": answer.owner,
    }
    return {k: clip(k, v) for k, v in fields.items() if v is not None}


def clip(column: str, value: str) -> str:
    """``value`` cut to what the ``orders`` column holds: one odd upstream answer must not
    fail the transaction it shares with other orders' answers (PostgreSQL refuses long values;
    SQLite would keep them)."""
    limit = getattr(ORDERS.c[column].type, "length", None)
    return value[:limit] if limit and len(value) > limit else value


def retry_verdict(
    order: OrderLike,
    error: UpstreamError,
    *,
    now: datetime,
    timing: Timing,
    rand: random.Random | None = None,
) -> tuple[int, RetryDecision]:
    """The order's failure count after ``error``, and whether (and when) to try again.

    The upstream's own trouble (``UpstreamUnavailable``: no permit, throttled, an outage)
    spends none of the order's attempts."""
    failures = order.failures + (0 if isinstance(error, UpstreamUnavailable) else 1)
    age_s = (now - order.budget_from).total_seconds()
    verdict = decide_retry(
        timing.policy, failures, age_s=age_s, retry_after_s=error.retry_after_s, rand=rand
    )
    return failures, verdict


def on_failure(
    order: OrderLike,
    error: UpstreamError,
    *,
    frm: Status,
    retry_to: Status,
    now: datetime,
    timing: Timing,
    rand: random.Random | None = None,
) -> Decision:
    """A failed preview or submit: reject, fail, hold as unknown, or schedule a retry.

    ``retry_to`` is where a retry waits: ``received`` (preview again) or ``previewed``.
    """

    def move(to: Status, values: dict[str, Any]) -> Move:
        return Move(
            order.id,
            frm,
            to,
            values,
            reason=error.reason,
            message=error.message,
            status_code=error.status_code,
        )

    if isinstance(error, AmbiguousError):
        # Hold, never resubmit: the upstream may have created the order; reconcile looks first.
        return Decision(
            move(
                S.SUBMIT_UNKNOWN,
                {**_DONE, "due_at": now + timedelta(seconds=timing.reconcile_delay_s)},
            )
        )
    if isinstance(error, PermanentError):
        return Decision(move(S.REJECTED, dict(_DONE)))
    if isinstance(error, AuthError):
        return Decision(move(S.FAILED, dict(_DONE)))
    if isinstance(error, UpstreamUnavailable):
        # The upstream's trouble, not the order's: wait (jittered, so the fleet comes back
        # spread out) without spending an attempt; only the age bound still applies.
        age_s = (now - order.budget_from).total_seconds()
        delay_s = (error.retry_after_s or 1.0) * (1 + 0.5 * (rand or random).random())
        if age_s + delay_s > timing.policy.max_age_s:
            return Decision(move(S.FAILED, dict(_DONE)))
        values, countdown = _schedule(now, delay_s, timing)
        return Decision(move(retry_to, values), countdown)
    failures, verdict = retry_verdict(order, error, now=now, timing=timing, rand=rand)
    if verdict.give_up:
        return Decision(move(S.FAILED, {**_DONE, "failures": failures}))
    values, countdown = _schedule(now, verdict.delay_s, timing)
    return Decision(move(retry_to, {**values, "failures": failures}), countdown)


def on_preview_ok(order: OrderLike, preview: PreviewResponse, *, lease_until: datetime) -> Decision:
    """Preview stored; the order goes straight on to ``submitting`` under the same lease."""
    values = {
        # As received: fields the upstream did not send are not invented (exclude_unset).
        "preview": preview.model_dump(mode="json", exclude_unset=True),
        "due_at": lease_until,
        "reason": None,
        "message": None,
        "next_attempt_at": None,
    }
    move = Move(order.id, S.PREVIEWING, S.SUBMITTING, values, via=S.PREVIEWED)
    return Decision(move)


def on_submit_ok(
    order: OrderLike, answer: SubmitResponse, *, frm: Status, now: datetime, timing: Timing
) -> Decision:
    """The upstream took the order: complete now, or follow it until it is.

    ``frm`` is ``submitting`` (a submit answer) or, in principle, any state a submit came from.
    """
    fields = upstream_fields(answer)
    outcome = upstream_status_outcome(fields.get("upstream_status"))
    base = {**fields, "submitted_at": now, "reason": None, "message": None}
    if outcome is S.COMPLETE:
        return Decision(Move(order.id, frm, S.COMPLETE, {**base, **_DONE}))
    if outcome is S.FAILED:
        values = {**base, **_DONE}
        return Decision(
            Move(
                order.id,
                frm,
                S.FAILED,
                values,
                reason="upstream_failed",
                message=f"upstream status {fields.get('upstream_status')!r}",
            )
        )
    values, countdown = _schedule(now, timing.follow_interval_s, timing)
    return Decision(Move(order.id, frm, S.SUBMITTED, {**base, **values}), countdown)


def on_follow(
    order: OrderLike, result: LimioOrderObject | UpstreamError, *, now: datetime, timing: Timing
) -> Decision:
    """A look at a submitted order upstream (its object, or the error reading it): complete,
    failed, or look again later; past ``follow_max_age_s`` it is failed (``follow_timeout``)."""
    submitted_at = order.submitted_at or order.updated_at
    if (now - submitted_at).total_seconds() > timing.follow_max_age_s:
        return Decision(
            Move(
                order.id,
                S.SUBMITTED,
                S.FAILED,
                dict(_DONE),
                reason="follow_timeout",
                message="upstream never reported the order complete",
            )
        )
    if not isinstance(result, UpstreamError):
        fields = upstream_fields(result)
        fields.pop("upstream_id", None)
        outcome = upstream_status_outcome(fields.get("upstream_status"))
        if outcome is S.COMPLETE:
            return Decision(Move(order.id, S.SUBMITTED, S.COMPLETE, {**fields, **_DONE}))
        if outcome is S.FAILED:
            return Decision(
                Move(
                    order.id,
                    S.SUBMITTED,
                    S.FAILED,
                    {**fields, **_DONE},
                    reason="upstream_failed",
                    message=f"upstream status {fields.get('upstream_status')!r}",
                )
            )
    delay = timing.follow_interval_s
    if isinstance(result, UpstreamError) and result.retry_after_s:
        delay = max(delay, result.retry_after_s)
    values, countdown = _schedule(now, delay, timing)
    # Same status: a reschedule, not a transition (the pipeline releases the lease).
    return Decision(Move(order.id, S.SUBMITTED, S.SUBMITTED, values), countdown)
