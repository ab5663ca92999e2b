"""Read the body of a preview or submit: the payload, its model, the subscription it names.

``forSubscription.id`` and ``subscriptionId`` name a subscription by its id (``sub-…``);
``subscriptionRef`` by its 12-character reference (upstream-api.md §4.5).

A problem is returned, not answered: the status it gets depends on the endpoint and on the
config (see :mod:`api_stub.app`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from api_stub.state import StubState, Subscription
from schemas.upstream import (
    ROOT_FIELD,
    OrderPayload,
    OrderValidationError,
    parse_order,
    validation_errors,
)

__all__ = ["OrderInput", "Problem", "read_order"]


@dataclass(frozen=True, slots=True)
class OrderInput:
    """A valid order payload and the existing subscription it names, if any."""

    order: OrderPayload
    payload: dict[str, Any]
    subscription: Subscription | None


@dataclass(frozen=True, slots=True)
class Problem:
    """Why an order cannot be served.

    Attributes:
        kind: ``payload`` (malformed or invalid) or ``not_found`` (unknown subscription).
        detail: What was wrong, naming the field(s), for the error message.
    """

    kind: Literal["payload", "not_found"]
    detail: str


def read_order(body: bytes, state: StubState) -> OrderInput | Problem:
    """Parse and validate ``body``, then look up the subscription it names in ``state``."""
    try:
        payload = orjson.loads(body)
        order = parse_order(payload)
    except orjson.JSONDecodeError:
        return Problem("payload", f"{ROOT_FIELD}: Malformed JSON body")
    except OrderValidationError as exc:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in validation_errors(exc))
        return Problem("payload", detail)
    subscription = None
    named = _named_subscription(payload)
    if named is not None:
        field, value = named
        if field == "subscriptionRef":
            subscription = state.by_reference.get(value)
        else:
            subscription = state.subscriptions.get(value)
        if subscription is None:
            return Problem("not_found", f"{field}: no subscription {value!r}")
    return OrderInput(order, payload, subscription)


def _named_subscription(payload: dict[str, Any]) -> tuple[str, str] | None:
    """``(field, value)`` of the first field naming a subscription, else ``None``.

    The fields are tried in the order ``OrderBase.subscription_reference`` uses:
    ``forSubscription.id``, ``subscriptionId``, ``subscriptionRef``.
    """
    holder = payload.get("forSubscription")
    candidates = (
        ("forSubscription.id", holder.get("id") if isinstance(holder, dict) else None),
        ("subscriptionId", payload.get("subscriptionId")),
        ("subscriptionRef", payload.get("subscriptionRef")),
    )
    for field, value in candidates:
        if isinstance(value, str) and value:
            return field, value
    return None
