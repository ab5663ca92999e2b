"""Upstream order payloads, one model per ``order_type`` (upstream-api.md §4, §10).

Types with a known shape get their own model; the other known types are validated by
:class:`PassThroughOrder` (the common base only). ``ORDER_MODELS`` maps every known
``order_type`` to its model, so dispatch is one dict lookup.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import AfterValidator, Field, StrictBool, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from schemas.upstream_parts import (
    Address,
    NonEmptyStr,
    OpenModel,
    OrderDiscount,
    OrderItem,
    Payment,
    Quantity,
    SubscriptionRef,
)

__all__ = [
    "KNOWN_ORDER_TYPES",
    "ORDER_MODELS",
    "AddOfferOrder",
    "CancelSubscriptionOrder",
    "ChangeAddressOrder",
    "ChangeOfferOrder",
    "ChangePaymentOrder",
    "NewOrder",
    "OrderBase",
    "OrderPayload",
    "PassThroughOrder",
    "UpdateSubscriptionOrder",
]


def _check_iso_datetime(value: str) -> str:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError(
            "datetime_format", "Input should be an ISO 8601 date-time"
        ) from None
    return value


IsoDateTime = Annotated[str, AfterValidator(_check_iso_datetime)]
"""An ISO 8601 date-time, checked but kept as the original string (exact round-trip)."""


class OrderBase(OpenModel):
    """Fields common to every order type; unknown fields are kept."""

    order_type: str
    external_id: str | None = None
    initiated_source: str | None = None
    source: str | None = None
    process_immediately: StrictBool = False
    orderDate: IsoDateTime | None = None
    customFields: dict[str, Any] | None = None
    forPartner: dict[str, Any] | None = None

    def subscription_reference(self) -> str | None:
        """The existing subscription this order names, if any.

        Looks at ``forSubscription.id``, then ``subscriptionId``, then ``subscriptionRef``,
        whether they are declared fields or extra keys.
        """
        values = self.__dict__
        extra = self.__pydantic_extra__ or {}
        sub = values.get("forSubscription", extra.get("forSubscription"))
        sub_id = sub.get("id") if isinstance(sub, dict) else getattr(sub, "id", None)
        for candidate in (
            sub_id,
            values.get("subscriptionId", extra.get("subscriptionId")),
            values.get("subscriptionRef", extra.get("subscriptionRef")),
        ):
            if isinstance(candidate, str) and candidate:
                return candidate
        return None


class NewOrder(OrderBase):
    """Create a new subscription."""

    order_type: Literal["new"]
    orderItems: Annotated[list[OrderItem], Field(min_length=1)]
    billingDetails: Address
    deliveryDetails: Address | None = None
    orderDiscount: OrderDiscount | None = None
    payment: Payment
    checkoutId: NonEmptyStr
    country: NonEmptyStr


class _ChangeOrder(OrderBase):
    """An order acting on an existing subscription, which it must name."""

    forSubscription: SubscriptionRef | None = None
    subscriptionId: NonEmptyStr | None = None
    missing_reference_field: ClassVar[str] = "forSubscription.id"
    reference_fields: ClassVar[str] = "forSubscription.id or subscriptionId"

    @model_validator(mode="after")
    def _require_subscription(self) -> Self:
        if self.subscription_reference() is None:
            error = PydanticCustomError(
                "subscription_reference_missing",
                "Field required: name the subscription with {fields}",
                {"fields": self.reference_fields},
            )
            loc = tuple(self.missing_reference_field.split("."))
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [InitErrorDetails(type=error, loc=loc, input=None)],
            )
        return self


class ChangeOfferOrder(_ChangeOrder):
    """Replace the offer attached to a subscription."""

    order_type: Literal["change_offer"]
    offer: dict[str, Any] | None = None
    orderItems: list[OrderItem] | None = None
    effectiveDate: str | None = None
    change_type: str | None = None


class AddOfferOrder(_ChangeOrder):
    """Add an offer (or a save offer) to a subscription."""

    order_type: Literal["add_offer"]
    offer: dict[str, Any] | None = None
    effectiveDate: str | None = None
    change_type: str | None = None
    quantity: Quantity | None = None
    payment: Payment | None = None
    data: dict[str, Any] | None = None
    missing_reference_field: ClassVar[str] = "subscriptionId"


class CancelSubscriptionOrder(_ChangeOrder):
    """Cancel a subscription."""

    order_type: Literal["cancel_subscription"]
    subscriptionRef: NonEmptyStr | None = None
    cancelDate: str | None = None
    data: dict[str, Any] | None = None
    missing_reference_field: ClassVar[str] = "subscriptionId"
    reference_fields: ClassVar[str] = "subscriptionId, subscriptionRef or forSubscription.id"


class ChangeAddressOrder(_ChangeOrder):
    """Set a new billing or delivery address on a subscription."""

    order_type: Literal["change_address"]
    address: Address
    type: str | None = None
    effectiveDate: str | None = None


class ChangePaymentOrder(_ChangeOrder):
    """Replace the payment method of a subscription."""

    order_type: Literal["change_payment"]
    payment: Payment
    customerId: str | None = None
    owner: str | None = None
    billingDetails: Address | None = None
    missing_reference_field: ClassVar[str] = "subscriptionId"


class UpdateSubscriptionOrder(_ChangeOrder):
    """Add or remove offers and add-ons on a subscription."""

    order_type: Literal["update_subscription"]
    forSubscription: SubscriptionRef
    orderItems: Annotated[list[OrderItem], Field(min_length=1)]


PassThroughType = Literal[
    "add_charge",
    "cancel_intent",
    "change_external_payment",
    "renew",
    "gift_refund",
    "pay_invoice",
    "refund",
]


class PassThroughOrder(OrderBase):
    """A known order type whose specific shape is not modelled: base fields only."""

    order_type: PassThroughType


OrderPayload = (
    NewOrder
    | ChangeOfferOrder
    | AddOfferOrder
    | CancelSubscriptionOrder
    | ChangeAddressOrder
    | ChangePaymentOrder
    | UpdateSubscriptionOrder
    | PassThroughOrder
)

ORDER_MODELS: dict[str, type[OrderPayload]] = {
    "new": NewOrder,
    "change_offer": ChangeOfferOrder,
    "add_offer": AddOfferOrder,
    "cancel_subscription": CancelSubscriptionOrder,
    "change_address": ChangeAddressOrder,
    "change_payment": ChangePaymentOrder,
    "update_subscription": UpdateSubscriptionOrder,
    **dict.fromkeys(get_args(PassThroughType), PassThroughOrder),
}

KNOWN_ORDER_TYPES: frozenset[str] = frozenset(ORDER_MODELS)
