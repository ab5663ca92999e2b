"""Ambiguous submits: find the order upstream, else hold it for an operator (or a policy).

The upstream has no idempotency key and no filter by ``external_id``; its order list is the one
place to look. We scan its newest pages for our ``external_id`` (we always send one). Found: the
order is recorded as submitted (and followed) or complete. Not found: with the default policy
``hold`` it waits for an operator; with ``resubmit`` it is submitted again, accepting the risk
of a duplicate. Either way the decision is a history row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from worker.errors import PermanentError, UpstreamError, UpstreamUnavailable
from worker.models import Order
from worker.pipeline.backoff import decide_retry
from worker.pipeline.outcomes import Decision, Timing, upstream_fields
from worker.pipeline.payload import sent_external_id
from worker.repository import Move
from worker.settings import Settings
from worker.states import Status, upstream_status_outcome
from worker.upstream.client import UpstreamClient

S = Status
_RELEASE = {"lease_owner": None}


def find_upstream(
    upstream: UpstreamClient, external_ids: set[str], max_pages: int
) -> dict[str, dict[str, Any]]:
    """Scan up to ``max_pages`` of the upstream order list for ``external_ids``."""
    found: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    for _ in range(max_pages):
        page = upstream.list_orders(limit=100, query_more=cursor)
        items = page.get("orders") or page.get("items") or page.get("data") or []
        for item in items if isinstance(items, list) else []:
            ext = item.get("external_id") if isinstance(item, dict) else None
            if ext in external_ids:
                found[ext] = item
        cursor = page.get("queryMore")
        if not cursor or found.keys() >= external_ids:
            break
    return found


def reconcile_decisions(
    orders: list[Order],
    upstream: UpstreamClient,
    settings: Settings,
    now: datetime,
    timing: Timing,
) -> list[Decision]:
    """Decide the fate of leased ``submit_unknown`` orders."""
    wanted = {sent_external_id(o): o for o in orders}
    try:
        found = find_upstream(upstream, set(wanted), settings.reconcile_max_pages)
    except PermanentError:
        # The upstream offers no list to search (404/405...): nothing can be found there.
        found = {}
    except UpstreamError as exc:
        return [_lookup_failed(order, exc, now, timing) for order in orders]
    decisions = []
    for ext, order in wanted.items():
        item = found.get(ext)
        if item is not None:
            decisions.append(_found(order, item, now, timing))
        elif settings.submit_unknown_policy == "resubmit":
            values = {**_RELEASE, "due_at": now, "next_attempt_at": None}
            decisions.append(
                Decision(
                    Move(
                        order.id,
                        S.SUBMIT_UNKNOWN,
                        S.PREVIEWED,
                        values,
                        reason="policy_resubmit",
                        message="not found upstream; resubmitting by ORDERS_SUBMIT_UNKNOWN_POLICY",
                    ),
                    0.0,
                )
            )
        else:
            decisions.append(_hold(order, "not found upstream after an ambiguous submit"))
    return decisions


def _found(order: Order, item: dict[str, Any], now: datetime, timing: Timing) -> Decision:
    fields = upstream_fields(item)
    outcome = upstream_status_outcome(fields.get("upstream_status"))
    msg = f"found upstream as {fields.get('upstream_id')}"
    if outcome is S.COMPLETE:
        done: dict[str, Any] = {**fields, **_RELEASE, "due_at": None, "next_attempt_at": None}
        return Decision(
            Move(order.id, S.SUBMIT_UNKNOWN, S.COMPLETE, done, reason="reconciled", message=msg)
        )
    at = now + timedelta(seconds=timing.follow_interval_s)
    values: dict[str, Any] = {
        **fields,
        **_RELEASE,
        "submitted_at": now,
        "next_attempt_at": at,
        "due_at": at + timedelta(seconds=timing.enqueue_grace_s),
    }
    return Decision(
        Move(order.id, S.SUBMIT_UNKNOWN, S.SUBMITTED, values, reason="reconciled", message=msg),
        timing.follow_interval_s,
    )


def _hold(order: Order, why: str) -> Decision:
    values = {**_RELEASE, "due_at": None, "next_attempt_at": None}
    return Decision(
        Move(
            order.id,
            S.SUBMIT_UNKNOWN,
            S.SUBMIT_UNKNOWN,
            values,
            reason="held_for_operator",
            message=why,
        )
    )


def _lookup_failed(order: Order, exc: UpstreamError, now: datetime, timing: Timing) -> Decision:
    # The upstream's trouble (no permit, throttled, outage) spends none of the order's budget.
    failures = order.failures + (0 if isinstance(exc, UpstreamUnavailable) else 1)
    age_s = (now - order.budget_from).total_seconds()
    verdict = decide_retry(timing.policy, failures, age_s, exc.retry_after_s)
    if verdict.give_up:
        return _hold(order, f"upstream lookup kept failing: {exc.reason}")
    at = now + timedelta(seconds=verdict.delay_s)
    values = {**_RELEASE, "failures": failures, "due_at": at, "next_attempt_at": at}
    # Same state, rescheduled: recorded as a decision so an operator can see the lookups.
    return Decision(
        Move(
            order.id,
            S.SUBMIT_UNKNOWN,
            S.SUBMIT_UNKNOWN,
            values,
            reason=f"lookup_{exc.reason}",
            message=exc.message,
        )
    )
