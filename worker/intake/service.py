"""Accepting orders: check, apply the idempotency rules, store in bulk, enqueue after commit.

One path, top to bottom: pure checks (:mod:`worker.intake.checks`) and the pure batch plan
(:mod:`worker.intake.plan`), then one transaction (:mod:`worker.intake.store`, the webhook
outbox), then ``dispatch`` after commit. Used by the HTTP API and usable in-process.

Repeats are answered, not duplicated (design.md invariant 7), per caller:

- ``Idempotency-Key``: see :mod:`worker.intake.idempotency` (replay, 422 on a different
  request, 409 while in flight). For a batch the key stands for the whole batch.
- ``external_id``: an order whose ``external_id`` the caller already used is answered with
  the original order when the payload is the same, and refused (422 naming ``external_id``)
  when it differs. In a batch this holds per item, also between items of the same batch.

Answers: new orders 202; a replay (by key, or a single order by ``external_id``) 200 with the
original. A batch answers 202 as soon as one item is accepted or found again; a batch in which
no item can be accepted is refused as a whole (422, ``fields`` named ``orders.<i>.<field>``)
and, like every refused request, writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from schemas.batches import BatchOptions
from worker.batches import rules as batch_rules
from worker.batches import store as batch_store
from worker.db import transaction
from worker.errors import InvalidInput, KeyInFlight
from worker.ids import new_id, utcnow
from worker.intake import Dispatch
from worker.intake import idempotency as idem
from worker.intake.checks import (
    ItemError,
    NewOrder,
    batch_errors,
    batch_hash,
    check_batch_shape,
    check_order,
    describe,
    split_batch,
)
from worker.intake.plan import Placed, external_ids, fill, plan_batch
from worker.intake.store import anonymous_orders, by_external_id, create_orders, find_for_caller
from worker.models import Order, StoredOrder
from worker.settings import Settings
from worker.views import order_view
from worker.webhooks.outbox import record_received

STORE_TRIES = 3
"""A concurrent request may take the same ``external_id`` between our read and our insert;
the next try then finds it and answers as a repeat."""


@dataclass(slots=True)
class Outcome:
    """What to answer: the body, whether it replays an earlier request, how many orders are new."""

    body: dict[str, Any]
    replayed: bool = False
    accepted: int = 0
    order_ids: list[str] = field(default_factory=list)


def accept_order(
    settings: Settings,
    caller_id: str,
    payload: Any,
    *,
    key: str | None = None,
    dispatch: Dispatch | None = None,
    may_hold_nul: bool = True,
) -> Outcome:
    """Accept one upstream order payload for ``caller_id``.

    Raises:
        InvalidInput: the payload is invalid, or its ``external_id`` was used with another one.
        KeyReused, KeyInFlight: see :mod:`worker.intake.idempotency`.
    """
    item = check_order(payload, may_hold_nul=may_hold_nul)
    claim = None
    if key is not None:
        resource, claim = _claim_key(settings, caller_id, key, item.request_hash)
        if resource is not None:
            with transaction(settings.database_url) as session:
                original = find_for_caller(session, caller_id, resource)
            if original is None:
                raise KeyInFlight(key)
            return Outcome(order_view(original), replayed=True)
    stored = _store(settings, caller_id, [item], claim=claim, batch_id=None)
    [order] = stored.placed
    if isinstance(order, ItemError):
        raise InvalidInput(order.message, order.fields)
    if stored.new_ids and dispatch is not None:
        dispatch(stored.new_ids, stored.deliveries, callers=[caller_id])
    created = bool(stored.new_ids)
    return Outcome(
        order_view(order), replayed=not created, accepted=int(created), order_ids=[order.id]
    )


def accept_batch(
    settings: Settings,
    caller_id: str,
    body: Any,
    *,
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
    options = batch_rules.parse_options(body, default_halt_on=settings.halt_on_for(caller_id))
    results = split_batch(items, may_hold_nul=may_hold_nul, max_order_bytes=settings.max_body_bytes)
    if not any(isinstance(r, NewOrder) for r in results):
        raise _no_valid_order(results)
    claim = None
    if key is not None:
        resource, claim = _claim_key(settings, caller_id, key, batch_hash(items, results))
        if resource is not None:
            placed = _replay_batch(settings.database_url, caller_id, resource, results)
            return Outcome(_batch_body(resource, placed), replayed=True)
    batch_id = new_id("bat")
    stored = _store(settings, caller_id, results, claim=claim, batch_id=batch_id, options=options)
    if stored.refused():
        raise _no_valid_order(stored.placed)
    if dispatch is not None and (stored.new_ids or stored.deliveries):
        dispatch(stored.new_ids, stored.deliveries, callers=[caller_id])
    return Outcome(
        _batch_body(batch_id, stored.placed),
        accepted=len(stored.new_ids),
        order_ids=stored.new_ids,
    )


def _no_valid_order(results: Sequence[object]) -> InvalidInput:
    fields = batch_errors(results)
    return InvalidInput(describe("no valid order in the batch", fields), fields)


@dataclass(frozen=True, slots=True)
class _Claim:
    """A key this request holds in flight since ``at`` (which tells it from a later claim)."""

    key: str
    at: datetime


def _claim_key(
    settings: Settings, caller_id: str, key: str, request_hash: str
) -> tuple[str | None, _Claim | None]:
    """The resource to replay, or None and our claim on the key."""
    now = utcnow()
    resource = idem.claim(
        settings.database_url,
        caller_id,
        key,
        request_hash=request_hash,
        now=now,
        ttl_s=settings.idempotency_ttl_s,
    )
    return resource, (None if resource is not None else _Claim(key, now))


@dataclass(slots=True)
class _Stored:
    placed: list[Placed]
    new_ids: list[str]
    deliveries: list[str]

    def refused(self) -> bool:
        """Whether no item was accepted (nothing was written)."""
        return all(isinstance(p, ItemError) for p in self.placed)


def _store(
    settings: Settings,
    caller_id: str,
    results: list[NewOrder | ItemError],
    *,
    claim: _Claim | None,
    batch_id: str | None,
    options: BatchOptions | None = None,
) -> _Stored:
    """Plan against the caller's existing orders and insert the new ones, in one transaction.

    Nothing is written when no item can be accepted. A claimed key is completed with the
    batch (or the single order) in the same transaction, or released if this fails.
    """
    stored = None
    try:
        for attempt in range(STORE_TRIES):
            try:
                with transaction(settings.database_url) as session:
                    stored = _store_once(
                        session,
                        caller_id,
                        results,
                        claim=claim,
                        batch_id=batch_id,
                        options=options,
                    )
                break
            except IntegrityError:
                if attempt == STORE_TRIES - 1:
                    raise
    finally:
        if claim is not None and (stored is None or stored.refused()):
            idem.release(settings.database_url, caller_id, claim.key, claimed_at=claim.at)
    assert stored is not None
    return stored


def _store_once(
    session: Session,
    caller_id: str,
    results: list[NewOrder | ItemError],
    *,
    claim: _Claim | None,
    batch_id: str | None,
    options: BatchOptions | None,
) -> _Stored:
    plan = plan_batch(results, by_external_id(session, caller_id, external_ids(results)))
    if not plan.accepts_any():
        return _Stored(fill(plan, results, []), [], [])
    now = utcnow()
    new_items = [results[i] for i in plan.to_create]
    created = create_orders(
        session,
        caller_id,
        new_items,  # type: ignore[arg-type]
        now=now,
        batch_id=batch_id,
        indexes=plan.to_create,
    )
    if batch_id is not None:
        batch_store.create(
            session,
            batch_id=batch_id,
            caller_id=caller_id,
            options=options or BatchOptions(),
            now=now,
        )
    placed = fill(plan, results, created)
    if claim is not None:
        resource = batch_id or placed[0].id  # type: ignore[union-attr]
        idem.complete(session, caller_id, claim.key, resource, claimed_at=claim.at)
    deliveries = record_received(session, caller_id, created, now=now)
    return _Stored(placed, [o.id for o in created], deliveries)


def _replay_batch(
    db_url: str, caller_id: str, batch_id: str, results: list[NewOrder | ItemError]
) -> list[Placed]:
    with transaction(db_url) as session:
        plan = plan_batch(results, by_external_id(session, caller_id, external_ids(results)))
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
