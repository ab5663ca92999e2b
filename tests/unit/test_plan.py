"""The pure batch plan: which items are new, which repeat an order, which are refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.intake.checks import ItemError, NewOrder, new_order
from worker.intake.plan import external_ids, fill, plan_batch
from worker.models import StoredOrder

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def item(ext: str | None, qty: int = 1) -> NewOrder:
    payload: dict[str, Any] = {"order_type": "new", "orderItems": [{"quantity": qty}]}
    if ext is not None:
        payload["external_id"] = ext
    return new_order(payload)


def stored(order_id: str, it: NewOrder) -> StoredOrder:
    return StoredOrder(
        id=order_id,
        caller_id="clr_1",
        batch_id=None,
        external_id=it.external_id,
        request_hash=it.request_hash,
        order_type=it.order_type,
        payload=it.payload,
        status="received",
        attempts=0,
        failures=0,
        budget_from=NOW,
        due_at=NOW,
        created_at=NOW,
        updated_at=NOW,
    )


def test_new_items_are_all_to_create() -> None:
    """Items with unseen external ids, or none, are created, in order."""
    results = [item("a"), item(None), item("b")]
    plan = plan_batch(results, {})
    assert plan.to_create == [0, 1, 2] and plan.slots == [None, None, None]
    assert plan.accepts_any() and external_ids(results) == ["a", "b"]


def test_existing_external_id_same_payload_is_answered_with_the_order() -> None:
    """A repeat of an existing order is that order; nothing is created for it."""
    existing = stored("ord_1", item("a"))
    plan = plan_batch([item("a")], {"a": existing})
    assert plan.to_create == [] and plan.slots == [existing] and plan.accepts_any()


def test_existing_external_id_other_payload_is_refused_naming_the_order() -> None:
    """The same external id with another payload is an error naming the holder."""
    plan = plan_batch([item("a", qty=2)], {"a": stored("ord_1", item("a"))})
    [error] = plan.slots
    assert isinstance(error, ItemError) and not plan.accepts_any()
    assert error.fields == [
        {"field": "external_id", "message": "already used by order ord_1 with a different payload"}
    ]


def test_repeats_inside_one_batch() -> None:
    """A second item with the same id and payload is the first one; another payload is refused."""
    plan = plan_batch([item("a"), item("a"), item("a", qty=3)], {})
    assert plan.to_create == [0] and plan.same_as == {1: 0}
    error = plan.slots[2]
    assert isinstance(error, ItemError) and "item 0 of this batch" in error.message


def test_invalid_items_keep_their_error() -> None:
    """An item that failed its checks stays an error in its slot."""
    bad = ItemError("invalid order: x", [{"field": "x", "message": "y"}])
    plan = plan_batch([bad, item("a")], {})
    assert plan.slots[0] is bad and plan.to_create == [1]
    assert plan.errors() == [bad, None]


def test_fill_puts_created_orders_back_in_place() -> None:
    """Created orders go to their items; anonymous ones by payload hash, in id order."""
    results = [item("a"), item(None), item(None), item("a")]
    plan = plan_batch(results, {})
    created = [
        stored("ord_2", results[0]),
        stored("ord_4", results[2]),
        stored("ord_3", results[1]),
    ]
    placed = fill(plan, results, created)
    assert [p.id for p in placed] == ["ord_2", "ord_3", "ord_4", "ord_2"]  # type: ignore[union-attr]


def test_fill_reports_an_order_that_was_not_found() -> None:
    """On a replay whose order is gone, the item says so instead of failing the batch."""
    results = [item("a")]
    [missing] = fill(plan_batch(results, {}), results, [])
    assert isinstance(missing, ItemError) and missing.message == "order not found"
