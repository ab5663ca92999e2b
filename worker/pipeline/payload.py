"""What we send upstream for an order."""

from __future__ import annotations

from typing import Any

from worker.models import OrderLike


def upstream_payload(order: OrderLike) -> dict[str, Any]:
    """The caller's payload, with our order id as ``external_id`` if the caller gave none.

    An ``external_id`` is what lets us find the order upstream after an ambiguous submit.
    """
    payload = dict(order.payload)
    if not payload.get("external_id"):
        payload["external_id"] = order.id
    return payload


def sent_external_id(order: OrderLike) -> str:
    """The ``external_id`` the upstream saw for ``order``."""
    return str(order.payload.get("external_id") or order.id)
