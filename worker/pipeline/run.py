"""The order pipeline: one run takes a chunk of order ids through every step that is due.

Steps are plain functions of the database, the upstream client and a thread pool (no Celery
here). Each run holds a lease (a random owner id) on the orders it claims; every transition is
a compare-and-set on status and lease, so a duplicate delivery or a racing worker walks away.
Database writes are batched per step for the whole chunk; upstream calls run concurrently.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from worker import repository as repo
from worker.db import transaction
from worker.errors import AmbiguousError, RetryableError, UpstreamError
from worker.ids import new_id, utcnow
from worker.models import Order
from worker.pipeline.backoff import RetryPolicy
from worker.pipeline.outcomes import (
    Decision,
    Timing,
    on_failure,
    on_follow,
    on_preview_ok,
    on_submit_ok,
)
from worker.pipeline.payload import upstream_payload
from worker.pipeline.reconcile import reconcile_decisions
from worker.repository import Event, Move
from worker.settings import Settings
from worker.states import Status
from worker.upstream.client import UpstreamClient

S = Status
T = TypeVar("T")
log = structlog.get_logger(__name__)

EventSink = Callable[[Any, Sequence[Event]], list[str]]
"""Called inside each transaction with the history rows written; returns webhook deliveries."""

# A message that fires slightly early (clock skew between hosts) still counts as due.
DUE_TOLERANCE = timedelta(seconds=0.5)


def timing_from(settings: Settings) -> Timing:
    policy = RetryPolicy(
        settings.retry_max_attempts,
        settings.retry_max_age_s,
        settings.retry_base_s,
        settings.retry_cap_s,
    )
    return Timing(
        policy=policy,
        countdown_max_s=settings.retry_countdown_max_s,
        enqueue_grace_s=settings.enqueue_grace_s,
        follow_interval_s=settings.follow_interval_s,
        follow_max_age_s=settings.follow_max_age_s,
        reconcile_delay_s=settings.reconcile_delay_s,
    )


def is_due(order: Order, now: datetime) -> bool:
    """Whether a run may work on ``order`` now (not scheduled later, not held)."""
    if order.next_attempt_at is not None and order.next_attempt_at > now + DUE_TOLERANCE:
        return False
    return not (order.status == S.SUBMIT_UNKNOWN and order.due_at is None)


@dataclass(slots=True)
class RunResult:
    """What a run leaves to its caller: orders to run again after a countdown, deliveries."""

    requeue: list[tuple[str, float]] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)
    moved: int = 0


@dataclass(slots=True)
class _Run:
    """One run's lease, the orders' attempt counts, and what it leaves to its caller."""

    owner: str
    lease_until: datetime
    attempts: dict[str, int] = field(default_factory=dict)
    result: RunResult = field(default_factory=RunResult)


class Pipeline:
    """Drives chunks of orders through preview, submit, follow-up and reconciliation."""

    def __init__(
        self,
        settings: Settings,
        upstream: UpstreamClient,
        executor: Executor,
        *,
        events: EventSink | None = None,
        rand: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.db_url = settings.database_url
        self.upstream = upstream
        self.executor = executor
        self.timing = timing_from(settings)
        self._events = events
        self._rand = rand
        self.actor = "worker"

    def run(self, ids: Sequence[str]) -> RunResult:
        """Take every due order of ``ids`` as far as it can go now."""
        now = utcnow()
        run = _Run(new_id("lease"), now + timedelta(seconds=self.settings.lease_s))
        with transaction(self.db_url) as session:
            orders = {o.id: o for o in repo.load(session, ids) if is_due(o, now)}
            by_status: dict[str, list[str]] = {}
            for order in orders.values():
                by_status.setdefault(order.status, []).append(order.id)
            events: list[Event] = []
            for frm, to in ((S.RECEIVED, S.PREVIEWING), (S.PREVIEWED, S.SUBMITTING)):
                events += repo.claim(
                    session,
                    by_status.get(frm, []),
                    frm=frm,
                    to=to,
                    now=now,
                    owner=run.owner,
                    lease_until=run.lease_until,
                    actor=self.actor,
                )
            follow, unknown = (
                repo.lease(
                    session,
                    by_status.get(st, []),
                    status=st,
                    owner=run.owner,
                    lease_until=run.lease_until,
                )
                for st in (S.SUBMITTED, S.SUBMIT_UNKNOWN)
            )
            self._record(session, events, run.result)
        run.attempts = {o.id: o.attempts for o in orders.values()}
        run.attempts.update((e["order_id"], e["attempt"]) for e in events)
        to_preview = [orders[e["order_id"]] for e in events if e["to_status"] == S.PREVIEWING]
        to_submit = [orders[e["order_id"]] for e in events if e["to_status"] == S.SUBMITTING]
        to_submit += self._preview(to_preview, run)
        self._submit(to_submit, run)
        self._follow([orders[i] for i in follow], run)
        if unknown:
            decisions = reconcile_decisions(
                [orders[i] for i in unknown],
                self.upstream,
                settings=self.settings,
                now=utcnow(),
                timing=self.timing,
            )
            self._apply(decisions, run)
        return run.result

    def _preview(self, orders: list[Order], run: _Run) -> list[Order]:
        outcomes = self._call_all(
            lambda o: self.upstream.preview(upstream_payload(o)), orders, ambiguous=False
        )
        decisions = self._decide(
            outcomes,
            lambda order, answer, _: on_preview_ok(order, answer, lease_until=run.lease_until),
            frm=S.PREVIEWING,
            retry_to=S.RECEIVED,
        )
        moved = self._apply(decisions, run)
        return [o for o, _, error in outcomes if error is None and o.id in moved]

    def _submit(self, orders: list[Order], run: _Run) -> None:
        outcomes = self._call_all(
            lambda o: self.upstream.submit(upstream_payload(o)), orders, ambiguous=True
        )
        decisions = self._decide(
            outcomes,
            lambda order, answer, now: on_submit_ok(
                order, answer, frm=S.SUBMITTING, now=now, timing=self.timing
            ),
            frm=S.SUBMITTING,
            retry_to=S.PREVIEWED,
        )
        self._apply(decisions, run)

    def _follow(self, orders: list[Order], run: _Run) -> None:
        outcomes = self._call_all(
            lambda o: self.upstream.get_order(o.upstream_id or ""), orders, ambiguous=False
        )
        now = utcnow()
        decisions = [
            on_follow(o, error or answer, now=now, timing=self.timing)
            for o, answer, error in outcomes
        ]
        self._apply(decisions, run)

    def _decide(
        self,
        outcomes: list[tuple[Order, Any, UpstreamError | None]],
        on_ok: Callable[[Order, Any, datetime], Decision],
        *,
        frm: Status,
        retry_to: Status,
    ) -> list[Decision]:
        """``on_ok`` for each answer, ``on_failure`` (retry waiting in ``retry_to``) for errors."""
        now = utcnow()
        return [
            on_ok(order, answer, now)
            if error is None
            else on_failure(
                order,
                error,
                frm=frm,
                retry_to=retry_to,
                now=now,
                timing=self.timing,
                rand=self._rand,
            )
            for order, answer, error in outcomes
        ]

    def _call_all(
        self, call: Callable[[Order], T], orders: list[Order], *, ambiguous: bool
    ) -> list[tuple[Order, Any, UpstreamError | None]]:
        """Run ``call`` for every order concurrently; never raises for one order's failure.

        Each result is ``(order, answer, None)`` or ``(order, None, error)``.
        """

        def one(order: Order) -> tuple[Order, T | None, UpstreamError | None]:
            try:
                return order, call(order), None
            except UpstreamError as exc:
                return order, None, exc
            except Exception as exc:  # a bug or a broken answer: never a blind re-submit
                log.exception("upstream_call_crashed", order_id=order.id)
                cls = AmbiguousError if ambiguous else RetryableError
                return order, None, cls("internal_error", f"{type(exc).__name__}: {exc}")

        if not orders:
            return []
        if len(orders) == 1:  # no thread hop for a single order (follow-ups, retries)
            return [one(orders[0])]
        return list(self.executor.map(one, orders))

    def _apply(self, decisions: list[Decision], run: _Run) -> set[str]:
        """Write the decisions in one transaction; returns the ids whose move won."""
        if not decisions:
            return set()
        now = utcnow()
        moves: list[Move] = []
        won: set[str] = set()
        with transaction(self.db_url) as session:
            for decision in decisions:
                move = decision.move
                if move.frm == move.to == S.SUBMITTED:
                    # A reschedule of the follow-up: same status, no history row.
                    values = _no_lease(move.values)
                    if repo.release(session, move.order_id, now=now, owner=run.owner, **values):
                        won.add(move.order_id)
                else:
                    moves.append(move)
            events = repo.apply_moves_bulk(
                session,
                moves,
                now=now,
                owner=run.owner,
                attempts=run.attempts,
                actor=self.actor,
            )
            won.update(e["order_id"] for e in events)
            self._record(session, events, run.result)
        for decision in decisions:
            if decision.move.order_id in won and decision.requeue_in_s is not None:
                run.result.requeue.append((decision.move.order_id, decision.requeue_in_s))
        run.result.moved += len(won)
        return won

    def _record(self, session: Any, events: Sequence[Event], result: RunResult) -> None:
        if events and self._events is not None:
            result.deliveries.extend(self._events(session, events))


def _no_lease(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k != "lease_owner"}
