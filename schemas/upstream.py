"""Wire contracts of the upstream Limio Commerce API (upstream-api.md §10).

The one entry point for order payloads is :func:`parse_order`; it dispatches on
``order_type`` with one dict lookup and raises :class:`OrderValidationError`, whose errors
name fields as dotted paths (``orderItems.0.offer.id``). :func:`validation_errors` turns it
(or a raw ``pydantic.ValidationError``) into ``[{"field": ..., "message": ...}]``.

Models live in ``upstream_parts`` (shared pieces), ``upstream_orders`` (requests) and
``upstream_responses`` (answers); they are re-exported here.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import ValidationError

from schemas.upstream_orders import (
    KNOWN_ORDER_TYPES,
    ORDER_MODELS,
    AddOfferOrder,
    CancelSubscriptionOrder,
    ChangeAddressOrder,
    ChangeOfferOrder,
    ChangePaymentOrder,
    NewOrder,
    OrderBase,
    OrderPayload,
    PassThroughOrder,
    UpdateSubscriptionOrder,
)
from schemas.upstream_parts import (
    Address,
    DiscountOverrides,
    OfferPayload,
    OrderDiscount,
    OrderItem,
    Payment,
    SubscriptionRef,
)
from schemas.upstream_responses import (
    SUBMIT_STATUS_COMPLETE,
    SUBMIT_STATUS_FAILED,
    SUBMIT_STATUS_SUBMITTED,
    CreditMemo,
    ErrorBody,
    Invoice,
    LimioOrderObject,
    OrderListPage,
    OrderSummary,
    PreviewResponse,
    PreviewResult,
    ScheduleEntry,
    SubmitResponse,
    TokenResponse,
    ZuoraPreview,
)

__all__ = [
    "KNOWN_ORDER_TYPES",
    "ORDER_MODELS",
    "ROOT_FIELD",
    "SUBMIT_STATUS_COMPLETE",
    "SUBMIT_STATUS_FAILED",
    "SUBMIT_STATUS_SUBMITTED",
    "AddOfferOrder",
    "Address",
    "CancelSubscriptionOrder",
    "ChangeAddressOrder",
    "ChangeOfferOrder",
    "ChangePaymentOrder",
    "CreditMemo",
    "DiscountOverrides",
    "ErrorBody",
    "Invoice",
    "LimioOrderObject",
    "NewOrder",
    "OfferPayload",
    "OrderBase",
    "OrderDiscount",
    "OrderItem",
    "OrderListPage",
    "OrderPayload",
    "OrderSummary",
    "OrderValidationError",
    "PassThroughOrder",
    "Payment",
    "PreviewResponse",
    "PreviewResult",
    "ScheduleEntry",
    "SubmitResponse",
    "SubscriptionRef",
    "TokenResponse",
    "UpdateSubscriptionOrder",
    "ZuoraPreview",
    "parse_order",
    "validation_errors",
]

ROOT_FIELD: Final = "(root)"
"""Field name used for errors about the payload as a whole (e.g. not a JSON object)."""

_KNOWN_TYPES_TEXT: Final = ", ".join(sorted(KNOWN_ORDER_TYPES))


class OrderValidationError(ValueError):
    """An order payload the upstream would refuse.

    Attributes:
        errors: ``(field_path, message)`` pairs, e.g. ``("orderItems.0.offer.id",
            "Field required")``; the path is :data:`ROOT_FIELD` for the payload itself.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) if loc else ROOT_FIELD


def parse_order(payload: Any) -> OrderPayload:
    """Validate an upstream order payload against the model of its ``order_type``.

    Args:
        payload: The decoded JSON body of an order, as the upstream accepts it.

    Returns:
        The model of the order's type; dumping it with ``model_dump(mode="json",
        exclude_unset=True, by_alias=True)`` gives ``payload`` back, unknown keys included.

    Raises:
        OrderValidationError: The payload is not an object, ``order_type`` is missing, not
            a string or not in ``KNOWN_ORDER_TYPES``, or a field is missing or invalid.
    """
    if not isinstance(payload, dict):
        raise OrderValidationError([(ROOT_FIELD, "Input should be a JSON object")])
    order_type = payload.get("order_type")
    if order_type is None:
        raise OrderValidationError([("order_type", "Field required")])
    if not isinstance(order_type, str):
        raise OrderValidationError([("order_type", "Input should be a valid string")])
    model = ORDER_MODELS.get(order_type)
    if model is None:
        message = f"Unknown order type {order_type!r}; expected one of: {_KNOWN_TYPES_TEXT}"
        raise OrderValidationError([("order_type", message)])
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        pairs = [(_field_path(err["loc"]), err["msg"]) for err in exc.errors()]
        raise OrderValidationError(pairs) from exc


def validation_errors(exc: OrderValidationError | ValidationError) -> list[dict[str, str]]:
    """List the errors of a failed validation as ``{"field": path, "message": text}``.

    Args:
        exc: Raised by :func:`parse_order`, or a ``ValidationError`` of any model here.

    Returns:
        One entry per error, e.g. ``[{"field": "billingDetails", "message": "Field required"}]``.
    """
    if isinstance(exc, OrderValidationError):
        return [{"field": field, "message": message} for field, message in exc.errors]
    return [{"field": _field_path(err["loc"]), "message": err["msg"]} for err in exc.errors()]
