"""The order pipeline: one run takes a chunk of order ids through every step that is due.

Steps are plain functions of the database, the upstream client and a thread pool (no Celery
here). Each run holds a lease (a random owner id) on the orders it claims; every transition is
a compare-and-set on status and lease, so a duplicate delivery or a racing worker walks away.
Upstream calls run concurrently; each answer is applied as soon as it is back (answers that
arrive within a few milliseconds of each other share one transaction), and the leases of the
orders still waiting on a call are renewed meanwhile, so one slow call costs only its order.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from worker import repository as repo
from worker.db import transaction
from worker.errors import AmbiguousError, RetryableError, UpstreamError
from worker.ids import new_id, utcnow
from worker.models import OrderLike
from worker.pipeline.backoff import RetryPolicy
from worker.pipeline.flight import Answer, Flight
from worker.pipeline.outcomes import (
    Decision,
    Timing,
    on_failure,
    on_follow,
    on_preview_ok,
    on_submit_ok,
)
from worker.pipeline.payload import sent_external_id, upstream_payload
from worker.pipeline.reconcile import reconcile_decisions
from worker.repository import Event, Move
from worker.settings import Settings
from worker.states import Status
from worker.upstream.client import UpstreamClient

if TYPE_CHECKING:
    from worker.flow.gate import Gate
    from worker.pipeline.tail import Tail

S = Status
T = TypeVar("T")
log = structlog.get_logger(__name__)

EventSink = Callable[[Any, Sequence[Event]], list[str]]
"""Called inside each transaction with the history rows written; returns webhook deliveries."""

# What the pipeline does when the fleet may not call (see worker/flow/gate.py).
SHORT_WAIT_S = 2.0
OUTAGE_RETRY_S = 1.0
# Orders in these states make an upstream call when run.
_CALLING = frozenset({S.RECEIVED, S.PREVIEWED, S.SUBMITTED, S.SUBMIT_UNKNOWN})

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


def is_due(order: OrderLike, now: datetime) -> bool:
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


@dataclass(slots=True)
class _Claimed:
    """What a run's first transaction took: the due orders, the claims' history rows (one
    call each), the orders leased to follow or to reconcile, and those held back while the
    breaker is open (one may be the fleet's probe)."""

    orders: dict[str, OrderLike]
    events: list[Event]
    follow: list[str]
    unknown: list[str]
    probe: list[OrderLike]


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
        gate: Gate | None = None,
    ) -> None:
        self.settings = settings
        self.db_url = settings.database_url
        self.upstream = upstream
        self.executor = executor
        self.timing = timing_from(settings)
        self._events = events
        self._rand = rand
        self.gate = gate
        self.actor = "worker"

    def run(self, ids: Sequence[str]) -> RunResult:
        """Take every due order of ``ids`` as far as it can go now: claim them (or leave them
        waiting while the fleet may not call), make the calls, reconcile ambiguous submits."""
        claimed, run, flight = self._begin(ids)
        flight.land()
        self._end(claimed, run)
        return run.result

    def run_overlapped(
        self, ids: Sequence[str], *, tail: Tail, then: Callable[[RunResult], None]
    ) -> bool:
        """:meth:`run`, handing the run's last calls to ``tail`` once they no longer fill this
        process's permits (see ``worker/pipeline/tail.py``). ``then`` gets the result when
        the run is over, here or on the tail's thread. Returns whether the tail took over."""
        claimed, run, flight = self._begin(ids)
        gate = self.gate
        started = len(flight.pending)

        def tail_starts(pending: int) -> bool:
            # Only a run that waited for permits (more calls than the process's allotment):
            # with room to spare, its next message would only add threads to a busy CPU.
            allotment = gate.allotment() if gate is not None else None
            return allotment is not None and pending <= allotment < started and tail.free()

        def rest() -> None:
            flight.land()
            self._end(claimed, run)
            then(run.result)

        if not flight.land(until=tail_starts) and tail.hand_off(rest):
            return True
        rest()
        return False

    def _begin(self, ids: Sequence[str]) -> tuple[_Claimed, _Run, Flight]:
        """Claim the due orders of ``ids`` (or hold them back) and start their calls."""
        now = utcnow()
        run = _Run(new_id("lease"), now + timedelta(seconds=self.settings.lease_s))
        claimed = self._claim(ids, run, now)
        if claimed.probe:
            self._probe(claimed.probe)
        return claimed, run, self._fly(claimed, run)

    def _end(self, claimed: _Claimed, run: _Run) -> None:
        """After the calls landed: look upstream for the run's ambiguous submits."""
        if claimed.unknown:
            self._reconcile([claimed.orders[i] for i in claimed.unknown], run)

    def _claim(self, ids: Sequence[str], run: _Run, now: datetime) -> _Claimed:
        """One transaction: load the due orders, hold them back if the fleet may not call,
        claim the ones that call next (an attempt each) and lease the ones to follow or
        reconcile."""
        with transaction(self.db_url) as session:
            loaded = repo.load(session, ids)
            orders: dict[str, OrderLike] = {o.id: o for o in loaded if is_due(o, now)}
            probe = self._hold_back(session, orders, run, now)
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
        return _Claimed(orders, events, follow, unknown, probe)

    def _fly(self, claimed: _Claimed, run: _Run) -> Flight:
        """The claimed orders' calls, started; each answer is applied as it comes back."""
        flight = Flight(
            self.executor,
            call=self.call,
            settle=lambda answers: self._settle(answers, run),
            renew=lambda ids: self._renew(ids, run),
            beat_s=self.settings.lease_s / 3,
        )
        for event in claimed.events:
            step = "preview" if event["to_status"] == S.PREVIEWING else "submit"
            flight.start(claimed.orders[event["order_id"]], step)
        for order_id in claimed.follow:
            flight.start(claimed.orders[order_id], "follow")
        return flight

    def _reconcile(self, held: list[OrderLike], run: _Run) -> None:
        """Look upstream for ambiguous submits (``submit_unknown``) and apply what it says."""
        ids = [o.id for o in held]
        with transaction(self.db_url) as session:
            sharers = repo.sharing_external_ids(
                session, [sent_external_id(o) for o in held], exclude=ids
            )
        decisions = reconcile_decisions(
            held,
            self.upstream,
            settings=self.settings,
            now=utcnow(),
            timing=self.timing,
            sharers=sharers,
        )
        self.apply(decisions, run)

    def _hold_back(
        self, session: Any, orders: dict[str, OrderLike], run: _Run, now: datetime
    ) -> list[OrderLike]:
        """While the fleet may not call (breaker open, long pause), leave the orders waiting.

        They stay in the database with ``reason`` and ``next_attempt_at`` and no history row.
        Returns the orders held back while the breaker is open (one may be the fleet's probe).
        """
        if self.gate is None:
            return []
        verdict = self.gate.admission()
        if verdict.kind == "go" or (verdict.kind == "wait" and verdict.wait_s <= SHORT_WAIT_S):
            return []
        waiting = [o for o in orders.values() if o.status in _CALLING]
        if verdict.kind == "probe":
            delay_s, reason = OUTAGE_RETRY_S, "upstream_unavailable"
        else:
            delay_s, reason = verdict.wait_s, "upstream_paused"
        jitter = (self._rand or random).random()
        delay_s = delay_s * (1 + 0.5 * jitter)
        at = now + timedelta(seconds=delay_s)
        short = delay_s <= self.timing.countdown_max_s
        # Due for the dispatcher at ``at``; a short wait also gets a tick then (invariant 4).
        held = repo.defer(session, [o.id for o in waiting], at=at, due_at=at, reason=reason)
        for order_id in held:
            orders.pop(order_id, None)
            if short:
                run.result.requeue.append((order_id, delay_s))
        return [o for o in waiting if o.id in set(held)] if verdict.kind == "probe" else []

    def _probe(self, held: list[OrderLike]) -> None:
        """The fleet's probe while the breaker is open (one per interval fleet-wide).

        One call that creates nothing upstream: a preview of a waiting order (the kind of call
        that was failing; a random one, so one payload the upstream always refuses cannot
        hold the breaker open), or, every other probe, a read of an order the upstream created
        (so waiting orders whose previews the upstream always refuses cannot either). The
        probe spends no order's budget and moves no order, whatever it answers; only a 2xx
        half-opens the breaker (never a 404 from an endpoint the upstream may not have).
        """
        assert self.gate is not None
        rand = self._rand or random
        calls: list[Callable[[], object]] = []
        previewable = [o for o in held if o.status in (S.RECEIVED, S.PREVIEWED)]
        if previewable:
            payload = upstream_payload(rand.choice(previewable))
            calls.append(lambda: self.upstream.preview(payload, probe=True))
        with transaction(self.db_url) as session:
            upstream_id = repo.known_upstream_id(session)
        if upstream_id:
            calls.append(lambda: self.upstream.get_order(upstream_id, probe=True))
        # The gate makes one of them per slot, taking turns (one call a second).
        if calls and self.gate.probe(calls):
            # The upstream answers again: the orders the outage turned away are due now (the
            # dispatcher's pass after this run sends them), not a second or two later.
            with transaction(self.db_url) as session:
                repo.undefer(
                    session,
                    reason="upstream_unavailable",
                    now=utcnow(),
                    within_s=2 * OUTAGE_RETRY_S,
                )

    def _settle(self, answers: list[Answer], run: _Run) -> set[str]:
        """Decide what each answer does to its order and write them in one transaction."""
        decisions = [self.decide(o, step, ans, err, run=run) for o, step, ans, err in answers]
        return self.apply(decisions, run)

    def _renew(self, ids: list[str], run: _Run) -> None:
        lease_until = utcnow() + timedelta(seconds=self.settings.lease_s)
        with transaction(self.db_url) as session:
            repo.renew_leases(session, ids, owner=run.owner, lease_until=lease_until)
        run.lease_until = lease_until

    def decide(
        self, order: OrderLike, step: str, answer: Any, error: UpstreamError | None, *, run: _Run
    ) -> Decision:
        """What one call's result does to its order (the pure functions of ``outcomes``)."""
        now = utcnow()
        if step == "follow":
            return on_follow(order, error or answer, now=now, timing=self.timing)
        if error is None:
            if step == "preview":
                return on_preview_ok(order, answer, lease_until=run.lease_until)
            return on_submit_ok(order, answer, frm=S.SUBMITTING, now=now, timing=self.timing)
        frm, retry_to = (
            (S.PREVIEWING, S.RECEIVED) if step == "preview" else (S.SUBMITTING, S.PREVIEWED)
        )
        return on_failure(
            order,
            error,
            frm=frm,
            retry_to=retry_to,
            now=now,
            timing=self.timing,
            rand=self._rand,
        )

    def call(self, order: OrderLike, step: str) -> tuple[Any, UpstreamError | None]:
        """One upstream call for ``order``; never raises for the order's failure."""
        try:
            if step == "preview":
                return self.upstream.preview(upstream_payload(order)), None
            if step == "submit":
                return self.upstream.submit(upstream_payload(order)), None
            return self.upstream.get_order(order.upstream_id or ""), None
        except UpstreamError as exc:
            return None, exc
        except Exception as exc:  # a bug or a broken answer: never a blind re-submit
            log.exception("upstream_call_crashed", order_id=order.id)
            cls = AmbiguousError if step == "submit" else RetryableError
            return None, cls("internal_error", f"{type(exc).__name__}: {exc}")

    def apply(self, decisions: list[Decision], run: _Run) -> set[str]:
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
            # A preview its batch held back (awaiting approval, halted) won, but must not go on.
            won.update(e["order_id"] for e in events if e["reason"] not in repo.HOLD_REASONS)
            late = [_late(m) for m in moves if m.order_id not in won and _is_submit_answer(m)]
            if late:
                # The sweeper moved these to submit_unknown meanwhile: the answer still counts.
                late_events = repo.apply_moves_bulk(
                    session, late, now=now, owner=None, attempts=run.attempts, actor=self.actor
                )
                won.update(e["order_id"] for e in late_events)
                events += late_events
            self._record(session, events, run.result)
        for decision in decisions:
            if decision.move.order_id in won and decision.requeue_in_s is not None:
                run.result.requeue.append((decision.move.order_id, decision.requeue_in_s))
        run.result.moved += len(won)
        return won

    def _record(self, session: Any, events: Sequence[Event], result: RunResult) -> None:
        if events and self._events is not None:
            result.deliveries.extend(self._events(session, events))


def _is_submit_answer(move: Move) -> bool:
    return move.frm == S.SUBMITTING and move.to in (S.SUBMITTED, S.COMPLETE)


def _late(move: Move) -> Move:
    message = "the submit answered after the lease had been recovered; answer recorded"
    return Move(
        move.order_id,
        S.SUBMIT_UNKNOWN,
        move.to,
        move.values,
        reason="late_submit_answer",
        message=message,
    )


def _no_lease(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k != "lease_owner"}
