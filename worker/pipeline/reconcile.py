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

from schemas.upstream_responses import OrderSummary
from worker.errors import PermanentError, UpstreamError
from worker.models import Order
from worker.pipeline.outcomes import Decision, Timing, retry_verdict, upstream_fields
from worker.pipeline.payload import sent_external_id
from worker.repository import Move
from worker.settings import Settings
from worker.states import Status, upstream_status_outcome
from worker.upstream.client import UpstreamClient

S = Status
_RELEASE = {"lease_owner": None}
# ORDERS_RECONCILE_MAX_PAGES counts pages of this size (the upstream's example uses 10).
PAGE_SIZE = 100


def find_upstream(
    upstream: UpstreamClient, external_ids: set[str], *, max_pages: int
) -> dict[str, OrderSummary]:
    """Scan up to ``max_pages`` of the upstream order list for ``external_ids``."""
    found: dict[str, OrderSummary] = {}
    cursor: str | None = None
    for _ in range(max_pages):
        page = upstream.list_orders(limit=PAGE_SIZE, query_more=cursor)
        for item in page.items:
            ext = item.external_id
            if ext is not None and ext in external_ids:
                found[ext] = item
        cursor = page.queryMore
        if not cursor or found.keys() >= external_ids:
            break
    return found


def reconcile_decisions(
    orders: list[Order],
    upstream: UpstreamClient,
    *,
    settings: Settings,
    now: datetime,
    timing: Timing,
) -> list[Decision]:
    """Decide the fate of leased ``submit_unknown`` orders."""
    wanted = {sent_external_id(o): o for o in orders}
    try:
        found = find_upstream(upstream, set(wanted), max_pages=settings.reconcile_max_pages)
    except PermanentError:
        # The upstream offers no list to search (404/405...): nothing can be found there.
        found = {}
    except UpstreamError as exc:
        return [_lookup_failed(order, exc, now=now, timing=timing) for order in orders]
    decisions = []
    for ext, order in wanted.items():
        item = found.get(ext)
        if item is not None:
            decisions.append(_found(order, item, now=now, timing=timing))
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
            # Not found may still mean "created but not listed yet": an operator decides, since
            # a duplicate order costs a customer more than a delay does.
            decisions.append(_hold(order, "not found upstream after an ambiguous submit"))
    return decisions


def _found(order: Order, item: OrderSummary, *, now: datetime, timing: Timing) -> Decision:
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


def _stay_unknown(order: Order, values: dict[str, Any], *, reason: str, message: str) -> Decision:
    """Same state, a recorded decision (a history row) so an operator can follow the lookups."""
    move = Move(
        order.id, S.SUBMIT_UNKNOWN, S.SUBMIT_UNKNOWN, values, reason=reason, message=message
    )
    return Decision(move)


def _hold(order: Order, why: str) -> Decision:
    values = {**_RELEASE, "due_at": None, "next_attempt_at": None}
    return _stay_unknown(order, values, reason="held_for_operator", message=why)


def _lookup_failed(order: Order, exc: UpstreamError, *, now: datetime, timing: Timing) -> Decision:
    failures, verdict = retry_verdict(order, exc, now=now, timing=timing)
    if verdict.give_up:
        return _hold(order, f"upstream lookup kept failing: {exc.reason}")
    at = now + timedelta(seconds=verdict.delay_s)
    values = {**_RELEASE, "failures": failures, "due_at": at, "next_attempt_at": at}
    return _stay_unknown(order, values, reason=f"lookup_{exc.reason}", message=exc.message)
