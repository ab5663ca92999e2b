"""Ambiguous submits: find the order upstream, else hold it for an operator (or a policy).

The upstream has no idempotency key and no filter by ``external_id``; its order list is the one
place to look. We scan its newest pages for our ``external_id`` (we always send one). Found: the
order is recorded as submitted (and followed) or complete. Not found: with the default policy
``hold`` it waits for an operator; with ``resubmit`` it is submitted again, accepting the risk
of a duplicate. Either way the decision is a history row.

``external_id`` is unique per caller only: another caller (or another order of this chunk) may
have sent the same one. A match is taken only when it cannot be anyone else's: exactly one
upstream order carries the id once the upstream orders our other orders are already tied to
are set aside, and no other order of ours that carries it is still untied. Anything else is
held for an operator (``reconcile_ambiguous``), never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from schemas.upstream_responses import OrderSummary
from worker.errors import PermanentError, UpstreamError
from worker.models import OrderLike
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


Sharers = Mapping[str, Sequence[tuple[str, str | None]]]
"""Per ``external_id``: our other orders that sent it, as ``(order id, upstream id or None)``."""


def find_upstream(
    upstream: UpstreamClient, external_ids: set[str], *, max_pages: int
) -> dict[str, list[OrderSummary]]:
    """Scan up to ``max_pages`` of the upstream order list for ``external_ids``: every match
    on the pages read (the scan stops once each id has matched)."""
    found: dict[str, list[OrderSummary]] = {}
    cursor: str | None = None
    for _ in range(max_pages):
        page = upstream.list_orders(limit=PAGE_SIZE, query_more=cursor)
        for item in page.items:
            ext = item.external_id
            if ext is not None and ext in external_ids:
                found.setdefault(ext, []).append(item)
        cursor = page.queryMore
        if not cursor or found.keys() >= external_ids:
            break
    return found


def reconcile_decisions(
    orders: list[OrderLike],
    upstream: UpstreamClient,
    *,
    settings: Settings,
    now: datetime,
    timing: Timing,
    sharers: Sharers | None = None,
) -> list[Decision]:
    """Decide the fate of leased ``submit_unknown`` orders (``sharers``: see ``Sharers``)."""
    by_ext: dict[str, list[OrderLike]] = {}
    for order in orders:
        by_ext.setdefault(sent_external_id(order), []).append(order)
    try:
        found = find_upstream(upstream, set(by_ext), max_pages=settings.reconcile_max_pages)
    except PermanentError:
        # The upstream offers no list to search (404/405...): not "not found", only unknown.
        return [_no_list(order, now=now, timing=timing) for order in orders]
    except UpstreamError as exc:
        return [_lookup_failed(order, exc, now=now, timing=timing) for order in orders]
    decisions = []
    for ext, group in by_ext.items():
        others = (sharers or {}).get(ext, ())
        tied = {upstream_id for _, upstream_id in others if upstream_id}
        candidates = [item for item in found.get(ext, []) if item.id not in tied]
        untied = len(group) + sum(1 for _, upstream_id in others if upstream_id is None)
        for order in group:
            decisions.append(
                _decide_one(
                    order, ext, candidates, untied, settings=settings, now=now, timing=timing
                )
            )
    return decisions


def _decide_one(
    order: OrderLike,
    ext: str,
    candidates: list[OrderSummary],
    untied: int,
    *,
    settings: Settings,
    now: datetime,
    timing: Timing,
) -> Decision:
    """Found (one candidate, nobody else's), ambiguous (held), or not found (the policy)."""
    if len(candidates) == 1 and untied == 1:
        return _found(order, candidates[0], now=now, timing=timing)
    if candidates:
        why = (
            f"{len(candidates)} upstream order(s) and {untied} of our orders carry "
            f"external_id {ext!r}: which is this order's cannot be told"
        )
        return _stay_unknown(
            order,
            {**_RELEASE, "due_at": None, "next_attempt_at": None},
            reason="reconcile_ambiguous",
            message=why,
        )
    if settings.submit_unknown_policy == "resubmit":
        values = {**_RELEASE, "due_at": now, "next_attempt_at": None}
        message = "not found upstream; resubmitting by ORDERS_SUBMIT_UNKNOWN_POLICY"
        move = Move(
            order.id,
            S.SUBMIT_UNKNOWN,
            S.PREVIEWED,
            values,
            reason="policy_resubmit",
            message=message,
        )
        return Decision(move, 0.0)
    # Not found may still mean "created but not listed yet": an operator decides, since a
    # duplicate order costs a customer more than a delay does.
    return _hold(order, "not found upstream after an ambiguous submit")


def _found(order: OrderLike, item: OrderSummary, *, now: datetime, timing: Timing) -> Decision:
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
        "due_at": at,
    }
    return Decision(
        Move(order.id, S.SUBMIT_UNKNOWN, S.SUBMITTED, values, reason="reconciled", message=msg),
        timing.follow_interval_s,
    )


def _no_list(order: OrderLike, *, now: datetime, timing: Timing) -> Decision:
    """Without an order list: an order whose upstream id we know is followed by
    ``GET /api/objects/limio/orders/{id}`` (the follow-up step); one without is held, never
    resubmitted blind (the policy's "not found" needs a list that was searched)."""
    if not order.upstream_id:
        return _hold(order, "the upstream has no order list to search and no id is known")
    values: dict[str, Any] = {**_RELEASE, "submitted_at": now}
    values |= {"next_attempt_at": now, "due_at": now}
    msg = f"no order list upstream; following {order.upstream_id} by id"
    return Decision(
        Move(order.id, S.SUBMIT_UNKNOWN, S.SUBMITTED, values, reason="reconciled", message=msg),
        0.0,
    )


def _stay_unknown(
    order: OrderLike, values: dict[str, Any], *, reason: str, message: str
) -> Decision:
    """Same state, a recorded decision (a history row) so an operator can follow the lookups."""
    move = Move(
        order.id, S.SUBMIT_UNKNOWN, S.SUBMIT_UNKNOWN, values, reason=reason, message=message
    )
    return Decision(move)


def _hold(order: OrderLike, why: str) -> Decision:
    values = {**_RELEASE, "due_at": None, "next_attempt_at": None}
    return _stay_unknown(order, values, reason="held_for_operator", message=why)


def _lookup_failed(
    order: OrderLike, exc: UpstreamError, *, now: datetime, timing: Timing
) -> Decision:
    failures, verdict = retry_verdict(order, exc, now=now, timing=timing)
    if verdict.give_up:
        return _hold(order, f"upstream lookup kept failing: {exc.reason}")
    at = now + timedelta(seconds=verdict.delay_s)
    values = {**_RELEASE, "failures": failures, "due_at": at, "next_attempt_at": at}
    return _stay_unknown(order, values, reason=f"lookup_{exc.reason}", message=exc.message)
