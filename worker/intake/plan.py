"""Placing the items of a batch: which are new, which repeat an order, which are refused. Pure.

:func:`plan_batch` decides per item, given the checked items and the caller's orders that
already hold their ``external_id`` s. :func:`fill` puts the orders created for the plan (or, on
an idempotent replay, found again) back at their item positions. Items without an
``external_id`` are matched by payload hash, in id order, so a replay answers each index with
the same order as the first request did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker.intake.checks import ItemError, NewOrder, duplicate_external_id
from worker.models import OrderLike

Placed = OrderLike | ItemError
"""What one batch item is answered with: its order, or why it was refused."""


@dataclass(slots=True)
class Plan:
    """Per item: an existing order, an error, or None (to be created, or same as another)."""

    slots: list[OrderLike | ItemError | None]
    to_create: list[int] = field(default_factory=list)
    same_as: dict[int, int] = field(default_factory=dict)

    def accepts_any(self) -> bool:
        """Whether any item is answered with an order."""
        return bool(self.to_create) or any(
            s is not None and not isinstance(s, ItemError) for s in self.slots
        )

    def errors(self) -> list[ItemError | None]:
        return [s if isinstance(s, ItemError) else None for s in self.slots]


def external_ids(results: Sequence[NewOrder | ItemError]) -> list[str]:
    """The ``external_id`` s of the valid items (what to look up before planning)."""
    return [r.external_id for r in results if isinstance(r, NewOrder) and r.external_id]


def plan_batch(results: Sequence[NewOrder | ItemError], existing: Mapping[str, OrderLike]) -> Plan:
    """Decide each item against ``existing`` (the caller's orders by ``external_id``)."""
    plan = Plan(slots=[])
    first: dict[str, int] = {}
    for index, item in enumerate(results):
        slot: OrderLike | ItemError | None = None
        if isinstance(item, ItemError):
            slot = item
        elif item.external_id is None:
            plan.to_create.append(index)
        elif (found := existing.get(item.external_id)) is not None:
            same = found.request_hash == item.request_hash
            slot = found if same else duplicate_external_id(f"order {found.id}")
        elif (earlier := first.get(item.external_id)) is not None:
            if results[earlier].request_hash == item.request_hash:  # type: ignore[union-attr]
                plan.same_as[index] = earlier
            else:
                slot = duplicate_external_id(f"item {earlier} of this batch")
        else:
            first[item.external_id] = index
            plan.to_create.append(index)
        plan.slots.append(slot)
    return plan


def fill(
    plan: Plan, results: Sequence[NewOrder | ItemError], orders: Sequence[OrderLike]
) -> list[Placed]:
    """The plan's slots with ``orders`` (created for it, or found again) put in place."""
    by_ext = {o.external_id: o for o in orders if o.external_id is not None}
    anonymous: dict[str, list[OrderLike]] = {}
    for order in sorted(
        (o for o in orders if o.external_id is None), key=lambda o: o.id, reverse=True
    ):
        anonymous.setdefault(order.request_hash, []).append(order)
    slots = list(plan.slots)
    for index in plan.to_create:
        item = results[index]
        assert isinstance(item, NewOrder)
        if item.external_id is not None:
            slots[index] = by_ext.get(item.external_id)
        else:
            bucket = anonymous.get(item.request_hash)
            slots[index] = bucket.pop() if bucket else None
    for index, earlier in plan.same_as.items():
        slots[index] = slots[earlier]
    return [s if s is not None else ItemError("order not found", []) for s in slots]
