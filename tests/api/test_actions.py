"""The action layer called directly, as every adapter calls it: scope, history names, bad
input and errors (the HTTP and console mappings are in test_operator.py and test_orders.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select, update

from schemas.upstream_responses import LimioOrderObject, OrderSummary
from tests.helpers import add_orders, new_caller, new_payload
from worker.actions import actor as actors
from worker.actions import retry_filter as by_filter
from worker.actions.cancel import cancel_order
from worker.actions.overview import counts_by_caller
from worker.actions.replay import replay_failed
from worker.actions.resolve import resolve_held
from worker.actions.retry_one import retry_order
from worker.actions.revoke import revoke_key
from worker.db import transaction
from worker.errors import (
    InvalidInput,
    KeyAdminError,
    OrderNotFound,
    PermanentError,
    RetryableError,
    UpstreamError,
    WrongState,
)
from worker.ids import new_id, utcnow
from worker.models import Caller, Order, OrderEvent, WebhookDelivery, WebhookEndpoint
from worker.states import Status

OLGA = actors.operator("olga")


class Dispatched:
    """A ``Dispatch`` that records what it was handed."""

    def __init__(self) -> None:
        self.orders: list[str] = []
        self.deliveries: list[str] = []

    def __call__(self, order_ids: Any, delivery_ids: Any, *, callers: Any = ()) -> None:
        self.orders += list(order_ids)
        self.deliveries += list(delivery_ids)


def set_status(db_url: str, ids: list[str], status: str, **values: Any) -> None:
    with transaction(db_url) as session:
        session.execute(
            update(Order).where(Order.id.in_(ids)).values(status=status, due_at=None, **values)
        )


def events_of(db_url: str, order_id: str) -> list[tuple[str | None, str | None]]:
    with transaction(db_url) as session:
        rows = session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        )
        return [(e.actor, e.reason) for e in rows]


def status_of(db_url: str, order_id: str) -> str:
    with transaction(db_url) as session:
        order = session.get(Order, order_id)
        assert order is not None
        return order.status


def test_a_caller_cancels_only_its_own_orders(clean_db: str) -> None:
    """Another caller's order is not found for a caller; an operator cancels any, and the
    history names who and why; a cancel is idempotent; a submitted order is 409."""
    alpha, beta = new_caller(clean_db, "alpha"), new_caller(clean_db, "beta")
    [mine, other] = add_orders(clean_db, alpha, [new_payload(1), new_payload(2)])
    with pytest.raises(OrderNotFound):
        cancel_order(clean_db, actors.caller(beta), mine)
    assert cancel_order(clean_db, actors.caller(alpha), mine)["status"] == "cancelled"
    assert events_of(clean_db, mine)[-1] == (f"caller:{alpha}", "cancelled_by_caller")
    assert cancel_order(clean_db, actors.caller(alpha), mine)["status"] == "cancelled"
    assert cancel_order(clean_db, OLGA, other)["status"] == "cancelled"
    assert events_of(clean_db, other)[-1] == ("operator:olga", "cancelled_by_operator")
    [sent] = add_orders(clean_db, alpha, [new_payload(3)])
    set_status(clean_db, [sent], "submitted")
    with pytest.raises(WrongState, match="only orders not yet submitted"):
        cancel_order(clean_db, OLGA, sent)


def test_retry_one_checks_time_first_then_scope_then_state(clean_db: str) -> None:
    """A bad ``at`` is refused before anything is read; an unknown order is not found; a
    received order is 409; a failed one is scheduled, named after the actor, dispatched."""
    alpha = new_caller(clean_db, "alpha")
    [oid] = add_orders(clean_db, alpha, [new_payload(1)])
    edge = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(InvalidInput):
        retry_order(clean_db, OLGA, "ord_" + "f" * 32, at=edge)
    with pytest.raises(OrderNotFound):
        retry_order(clean_db, OLGA, "ord_" + "f" * 32)
    with pytest.raises(WrongState, match="only failed"):
        retry_order(clean_db, OLGA, oid)
    set_status(clean_db, [oid], "failed", reason="upstream_502")
    dispatched = Dispatched()
    assert retry_order(clean_db, actors.caller(alpha), oid, dispatch=dispatched) == 1
    assert dispatched.orders == [oid]
    assert events_of(clean_db, oid)[-1] == (f"caller:{alpha}", "retry_scheduled")


def test_retry_later_is_not_dispatched_now(clean_db: str) -> None:
    """A retry ``at`` a future time (naive: UTC) waits in the database: nothing dispatched."""
    alpha = new_caller(clean_db, "alpha")
    [oid] = add_orders(clean_db, alpha, [new_payload(1)])
    set_status(clean_db, [oid], "failed")
    later = (utcnow() + timedelta(hours=1)).replace(tzinfo=None)
    dispatched = Dispatched()
    assert retry_order(clean_db, OLGA, oid, at=later, dispatch=dispatched) == 1
    assert dispatched.orders == []
    with transaction(clean_db) as session:
        order = session.get(Order, oid)
        assert order is not None and order.next_attempt_at == later.replace(tzinfo=UTC)


def test_retry_by_filter_scope_and_dry_run(clean_db: str) -> None:
    """A caller's filter never reaches another caller (even naming it); an operator's covers
    all or the one caller named; the dry run counts and writes nothing."""
    alpha, beta = new_caller(clean_db, "alpha"), new_caller(clean_db, "beta")
    a = add_orders(clean_db, alpha, [new_payload(i) for i in range(2)])
    b = add_orders(clean_db, beta, [new_payload(i) for i in range(3)])
    set_status(clean_db, a + b, "failed", reason="upstream_502")
    flt = by_filter.RetryFilter(reason="upstream_502", caller_id=beta)
    with transaction(clean_db) as session:
        assert by_filter.count_matching(session, actors.caller(alpha), flt).matched == 2
        dry = by_filter.count_matching(session, OLGA, flt, sample_size=2)
        assert (dry.matched, dry.sample) == (3, sorted(b)[:2])
        everyone = by_filter.count_matching(session, OLGA, by_filter.RetryFilter())
        assert everyone.answer() == {"scheduled": 0, "matched": 5, "sample": sorted(a + b)}
    assert {status_of(clean_db, i) for i in a + b} == {"failed"}
    assert by_filter.retry_matching(clean_db, actors.caller(alpha), flt) == 2
    assert by_filter.retry_matching(clean_db, OLGA, by_filter.RetryFilter()) == 3
    assert events_of(clean_db, b[0])[-1] == ("operator:olga", "retry_scheduled")


def test_retry_by_filter_refuses_what_is_never_retried(clean_db: str) -> None:
    """A status outside failed/submit_unknown is 409; held orders are counted, not retried."""
    alpha = new_caller(clean_db, "alpha")
    ids = add_orders(clean_db, alpha, [new_payload(i) for i in range(2)])
    set_status(clean_db, ids, "submit_unknown", reason="held_for_operator")
    with pytest.raises(WrongState, match="can be retried"):
        by_filter.retry_matching(clean_db, OLGA, by_filter.RetryFilter(Status.COMPLETE))
    with pytest.raises(WrongState, match=r"^2 held order"):
        by_filter.retry_matching(clean_db, OLGA, by_filter.RetryFilter(Status.SUBMIT_UNKNOWN))
    assert {status_of(clean_db, i) for i in ids} == {"submit_unknown"}


def _not_found(upstream_id: str) -> LimioOrderObject:
    raise PermanentError("upstream_404", f"no {upstream_id}")


def _nothing_listed(external_id: str) -> list[OrderSummary]:
    return []


def test_resolve_refuses_bad_input_before_asking_upstream(clean_db: str) -> None:
    """A caller may not resolve; a path as upstream id is 422 naming the field; an unknown or
    not-held order is 404 / 409; none of these reach the upstream."""
    alpha = new_caller(clean_db, "alpha")
    [oid] = add_orders(clean_db, alpha, [new_payload(1)])
    asked: list[str] = []

    def lookup(upstream_id: str) -> LimioOrderObject:
        asked.append(upstream_id)
        return _not_found(upstream_id)

    def resolve(who: actors.Actor, order_id: str, upstream_id: str | None) -> dict[str, Any]:
        return resolve_held(
            clean_db, who, order_id, upstream_id=upstream_id, lookup=lookup, search=_nothing_listed
        )

    with pytest.raises(WrongState, match="only an operator"):
        resolve(actors.caller(alpha), oid, None)
    with pytest.raises(InvalidInput) as refused:
        resolve(OLGA, oid, "../../oauth2/token")
    assert refused.value.fields[0]["field"] == "upstream_id"
    with pytest.raises(OrderNotFound):
        resolve(OLGA, "ord_" + "f" * 32, None)
    with pytest.raises(WrongState, match="not held"):
        resolve(OLGA, oid, None)
    assert asked == []
    set_status(clean_db, [oid], "submit_unknown", reason="held_for_operator")
    with pytest.raises(InvalidInput, match="upstream has no order order-1"):
        resolve(OLGA, oid, "order-1")
    assert asked == ["order-1"] and status_of(clean_db, oid) == "submit_unknown"


def test_resolve_when_the_upstream_cannot_be_asked(clean_db: str) -> None:
    """An upstream that does not answer is an UpstreamError saying so; nothing moves."""
    alpha = new_caller(clean_db, "alpha")
    [oid] = add_orders(clean_db, alpha, [new_payload(1)])
    set_status(clean_db, [oid], "submit_unknown", reason="held_for_operator")

    def down(_: str) -> list[OrderSummary]:
        raise RetryableError("upstream_503", status_code=503)

    with pytest.raises(UpstreamError) as refused:
        resolve_held(clean_db, OLGA, oid, upstream_id=None, lookup=_not_found, search=down)
    assert refused.value.message == (
        "the upstream could not be asked about None: upstream_503; try again"
    )
    assert status_of(clean_db, oid) == "submit_unknown"
    assert events_of(clean_db, oid)[-1][1] != "operator_resubmit"


def test_resolve_not_created_resubmits_when_nothing_is_found(clean_db: str) -> None:
    """Nothing found upstream: the held order goes back to previewed, named after the
    operator, and is dispatched."""
    alpha = new_caller(clean_db, "alpha")
    [oid] = add_orders(clean_db, alpha, [new_payload(1)])
    set_status(clean_db, [oid], "submit_unknown", reason="held_for_operator")
    dispatched = Dispatched()
    view = resolve_held(
        clean_db,
        OLGA,
        oid,
        upstream_id=None,
        lookup=_not_found,
        search=_nothing_listed,
        dispatch=dispatched,
    )
    assert view["status"] == "previewed" and dispatched.orders == [oid]
    assert events_of(clean_db, oid)[-1] == ("operator:olga", "operator_resubmit")


def _delivery(session: Any, endpoint_id: str, status: str, created_at: datetime) -> str:
    delivery_id = new_id("dlv")
    session.add(
        WebhookDelivery(
            id=delivery_id,
            endpoint_id=endpoint_id,
            order_id=new_id("ord"),
            event_type="order.failed",
            payload={},
            status=status,
            attempts=5,
            due_at=None,
            created_at=created_at,
            updated_at=created_at,
        )
    )
    return delivery_id


def test_replay_makes_failed_deliveries_since_a_time_pending(clean_db: str) -> None:
    """Only failed deliveries of that endpoint created since ``since`` (naive: UTC) are made
    pending with a fresh budget and dispatched; a bad ``since`` is 422 naming it."""
    alpha = new_caller(clean_db, "alpha")
    now = utcnow()
    endpoint_id = new_id("whe")
    with transaction(clean_db) as session:
        session.add(
            WebhookEndpoint(
                id=endpoint_id, caller_id=alpha, url="https://x.test", secret="s", created_at=now
            )
        )
        session.flush()
        old = _delivery(session, endpoint_id, "failed", now - timedelta(days=2))
        recent = _delivery(session, endpoint_id, "failed", now - timedelta(minutes=5))
        _delivery(session, endpoint_id, "delivered", now - timedelta(minutes=5))
    dispatched = Dispatched()
    since = (now - timedelta(hours=1)).replace(tzinfo=None)
    assert replay_failed(clean_db, OLGA, endpoint_id, since=since, dispatch=dispatched) == 1
    assert dispatched.deliveries == [recent]
    with transaction(clean_db) as session:
        rows = {d.id: d for d in session.scalars(select(WebhookDelivery))}
    assert (rows[recent].status, rows[recent].attempts) == ("pending", 0)
    assert rows[old].status == "failed"
    edge = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(InvalidInput) as refused:
        replay_failed(clean_db, OLGA, endpoint_id, since=edge)
    assert refused.value.fields[0]["field"] == "since"
    assert replay_failed(clean_db, OLGA, endpoint_id) == 1  # the old one, now


def test_revoke_key_is_idempotent_and_refuses_unknown_names(clean_db: str) -> None:
    """The first revocation time stays; an unknown name is KeyAdminError; no name is 422."""
    new_caller(clean_db, "alpha")
    first = revoke_key(clean_db, OLGA, "alpha")
    again = revoke_key(clean_db, OLGA, "alpha", now=first.revoked_at + timedelta(hours=1))
    assert (again.name, again.revoked_at) == ("alpha", first.revoked_at)
    with pytest.raises(KeyAdminError) as refused:
        revoke_key(clean_db, OLGA, "nobody")
    assert refused.value.reason == "unknown_name"
    with pytest.raises(InvalidInput):
        revoke_key(clean_db, OLGA, "  ")


def test_counts_by_caller_lists_every_caller_and_no_operator(clean_db: str) -> None:
    """Each caller with its counts by status (none: empty); operators are not callers."""
    alpha, beta = new_caller(clean_db, "alpha"), new_caller(clean_db, "beta")
    ids = add_orders(clean_db, alpha, [new_payload(i) for i in range(3)])
    set_status(clean_db, ids[:1], "failed")
    with transaction(clean_db) as session:
        session.execute(update(Caller).where(Caller.id == beta).values(revoked_at=utcnow()))
        session.add(
            Caller(
                id=new_id("clr"),
                name="olga",
                role="operator",
                key_hash="h",
                key_prefix="p",
                created_at=utcnow(),
            )
        )
    with transaction(clean_db) as session:
        rows = counts_by_caller(session)
    assert [(c.name, c.revoked, c.counts, c.total) for c in rows] == [
        ("alpha", False, {"failed": 1, "received": 2}, 3),
        ("beta", True, {}, 0),
    ]
