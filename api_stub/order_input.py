"""Read the body of a preview or submit: the payload, its model, the subscription it names.

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
    reference = order.subscription_reference()
    if reference is not None:
        subscription = state.find_subscription(reference)
        if subscription is None:
            return Problem("not_found", f"no subscription {reference}")
    return OrderInput(order, payload, subscription)
