"""Accepting orders: validate, apply the idempotency rules, store in bulk, enqueue after commit.

Used by the HTTP API and usable in-process (e.g. by ``orders submit``). Nothing here raises
for a broker problem: ``dispatch`` is called after commit and must swallow its own errors
(orders committed but not enqueued are picked up by the sweeper once ``due_at`` passes).

Repeats are answered, not duplicated (design.md invariant 7), per caller:

- ``Idempotency-Key``: see :mod:`worker.intake.idempotency` (replay, 422 on a different request,
  409 while in flight). For a batch the key stands for the whole batch.
- ``external_id``: an order whose ``external_id`` the caller already used is answered with
  the original order when the payload is the same, and refused (422 naming ``external_id``)
  when it differs. In a batch this holds per item, also between items of the same batch.

Answers: new orders 202; a replay (by key, or a single order by ``external_id``) 200 with the
original. A batch answers 202 as soon as one item is accepted or found again; a batch in which
no item can be accepted is refused as a whole (422, ``fields`` named ``orders.<i>.<field>``)
and, like every refused request, writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from worker.db import transaction
from worker.ids import new_id, utcnow
from worker.intake import idempotency as idem
from worker.intake.checks import (
    InvalidInput,
    ItemError,
    batch_errors,
    batch_hash,
    check_batch_shape,
    check_order,
    describe,
    split_batch,
)
from worker.intake.plan import (
    Placed,
    anonymous_orders,
    by_external_id,
    fill,
    plan_batch,
    record_received,
)
from worker.intake.store import NewOrder, OrderLike, StoredOrder, create_orders, find_for_caller
from worker.models import Order
from worker.settings import Settings
from worker.views import order_view

Dispatch = Callable[[Sequence[str], Sequence[str]], object]
"""Enqueue (order ids, webhook delivery ids) after commit; must not raise."""

STORE_TRIES = 3


@dataclass(slots=True)
class Outcome:
    """What to answer: the body, whether it replays an earlier request, how many orders are new."""

    body: dict[str, Any]
    replayed: bool = False
    accepted: int = 0
    order_ids: list[str] = field(default_factory=list)


def _conflict(order: Order) -> InvalidInput:
    fields = [
        {
            "field": "external_id",
            "message": f"already used by order {order.id} with a different payload",
        }
    ]
    return InvalidInput(describe("duplicate external_id", fields), fields)


def accept_order(
    settings: Settings,
    caller_id: str,
    payload: Any,
    key: str | None = None,
    dispatch: Dispatch | None = None,
    may_hold_nul: bool = True,
) -> Outcome:
    """Accept one upstream order payload for ``caller_id``.

    Raises:
        InvalidInput: the payload is invalid, or its ``external_id`` was used with another one.
        KeyReused, KeyInFlight: see :mod:`worker.intake.idempotency`.
    """
    item = check_order(payload, may_hold_nul)
    url = settings.database_url
    now = utcnow()
    if key is not None:
        resource = idem.claim(
            url, caller_id, key, item.request_hash, now, settings.idempotency_ttl_s
        )
        if resource is not None:
            with transaction(url) as session:
                original = find_for_caller(session, caller_id, resource)
            if original is None:
                raise idem.KeyInFlight(key)
            return Outcome(order_view(original), replayed=True)
    try:
        order, deliveries, created = _store_order(settings, caller_id, item, key, now)
    except BaseException:
        if key is not None:
            idem.release(url, caller_id, key)
        raise
    if created and dispatch is not None:
        dispatch([order.id], deliveries)
    return Outcome(
        order_view(order), replayed=not created, accepted=int(created), order_ids=[order.id]
    )


def _store_order(
    settings: Settings, caller_id: str, item: NewOrder, key: str | None, now: datetime
) -> tuple[OrderLike, list[str], bool]:
    for attempt in range(STORE_TRIES):
        try:
            with transaction(settings.database_url) as session:
                ext = [item.external_id] if item.external_id is not None else []
                found = by_external_id(session, caller_id, ext).get(item.external_id or "")
                if found is not None:
                    if found.request_hash != item.request_hash:
                        raise _conflict(found)
                    if key is not None:
                        idem.complete(session, caller_id, key, found.id)
                    return found, [], False
                [order] = create_orders(session, caller_id, [item], now, settings.enqueue_grace_s)
                if key is not None:
                    idem.complete(session, caller_id, key, order.id)
                deliveries = record_received(session, caller_id, [order], now)
            return order, deliveries, True
        except IntegrityError:
            # A concurrent request took the same external_id first: answer as a repeat.
            if attempt == STORE_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def accept_batch(
    settings: Settings,
    caller_id: str,
    body: Any,
    key: str | None = None,
    dispatch: Dispatch | None = None,
    may_hold_nul: bool = True,
) -> Outcome:
    """Accept a batch body ``{"orders": [...]}``: every valid item, one result per item.

    The valid items are written with one bulk insert and enqueued in chunks after commit.

    Raises:
        InvalidInput: the body is not a batch, has too many items, or no item can be accepted.
        KeyReused, KeyInFlight: see :mod:`worker.intake.idempotency`.
    """
    items = check_batch_shape(body, settings.max_batch_items)
    results = split_batch(items, may_hold_nul)
    if not any(isinstance(r, NewOrder) for r in results):
        fields = batch_errors(results)
        raise InvalidInput(describe("no valid order in the batch", fields), fields)
    url = settings.database_url
    now = utcnow()
    if key is not None:
        resource = idem.claim(
            url, caller_id, key, batch_hash(items, results), now, settings.idempotency_ttl_s
        )
        if resource is not None:
            placed = _replay_batch(url, caller_id, resource, results)
            return Outcome(_batch_body(resource, placed), replayed=True)
    try:
        batch_id, placed, new_ids, deliveries = _store_batch(settings, caller_id, results, key, now)
    except BaseException:
        if key is not None:
            idem.release(url, caller_id, key)
        raise
    if dispatch is not None and (new_ids or deliveries):
        dispatch(new_ids, deliveries)
    return Outcome(_batch_body(batch_id, placed), accepted=len(new_ids), order_ids=new_ids)


def _store_batch(
    settings: Settings,
    caller_id: str,
    results: list[NewOrder | ItemError],
    key: str | None,
    now: datetime,
) -> tuple[str, list[Placed], list[str], list[str]]:
    ext_ids = [r.external_id for r in results if isinstance(r, NewOrder) and r.external_id]
    for attempt in range(STORE_TRIES):
        try:
            with transaction(settings.database_url) as session:
                plan = plan_batch(results, by_external_id(session, caller_id, ext_ids))
                if not plan.accepts_any():
                    fields = batch_errors(plan.errors())
                    raise InvalidInput(describe("no valid order in the batch", fields), fields)
                batch_id = new_id("bat")
                new_items = [results[i] for i in plan.to_create]
                created = create_orders(
                    session,
                    caller_id,
                    new_items,  # type: ignore[arg-type]
                    now,
                    settings.enqueue_grace_s,
                    batch_id,
                )
                placed = fill(plan, results, created)
                if key is not None:
                    idem.complete(session, caller_id, key, batch_id)
                deliveries = record_received(session, caller_id, created, now)
            return batch_id, placed, [o.id for o in created], deliveries
        except IntegrityError:
            if attempt == STORE_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _replay_batch(
    url: str, caller_id: str, batch_id: str, results: list[NewOrder | ItemError]
) -> list[Placed]:
    ext_ids = [r.external_id for r in results if isinstance(r, NewOrder) and r.external_id]
    with transaction(url) as session:
        plan = plan_batch(results, by_external_id(session, caller_id, ext_ids))
        found = anonymous_orders(session, caller_id, batch_id) if plan.to_create else []
    return fill(plan, results, found)


def _batch_body(batch_id: str, placed: list[Placed]) -> dict[str, Any]:
    views: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for index, item in enumerate(placed):
        if isinstance(item, Order | StoredOrder):
            view = views.get(item.id)
            if view is None:
                view = views[item.id] = order_view(item)
            out.append({"index": index, "order": view})
        else:
            out.append({"index": index, "error": item.as_dict()})
    return {"batch_id": batch_id, "results": out}
