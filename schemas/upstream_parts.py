"""Small shared pieces of the upstream order payload (upstream-api.md §4, §10).

Every model keeps unknown keys (``extra="allow"``) so that a payload validated here and
dumped with ``model_dump(mode="json", exclude_unset=True, by_alias=True)`` is the payload
that came in. Scalars are checked without coercion for the same reason: ``"2"`` is not
silently turned into ``2``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "Address",
    "DiscountOverrides",
    "NonEmptyStr",
    "Number",
    "OfferPayload",
    "OpenModel",
    "OrderDiscount",
    "OrderItem",
    "Payment",
    "Quantity",
    "SubscriptionRef",
]


class OpenModel(BaseModel):
    """Base of every upstream model: unknown fields are kept and dumped back."""

    model_config = ConfigDict(extra="allow")


def _check_number(value: Any) -> int | float:
    # bool is an int subclass; JSON true is not a quantity.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


Number = Annotated[int | float, PlainValidator(_check_number, json_schema_input_type=float)]
"""A JSON number, kept as given (int stays int), never parsed from a string."""


def _check_quantity(value: Any) -> int | float:
    number = _check_number(value)
    if number < 0:
        raise PydanticCustomError("quantity_negative", "Input should be greater than or equal to 0")
    return number


Quantity = Annotated[
    int | float,
    PlainValidator(_check_quantity, json_schema_input_type=float),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
"""A :data:`Number` that is not negative (how many of an item)."""

NonEmptyStr = Annotated[str, Field(min_length=1)]


class Address(OpenModel):
    """A billing or delivery address; upstream marks no field as required."""

    firstName: str | None = None
    lastName: str | None = None
    email: str | None = None
    workEmail: str | None = None
    phone: str | None = None
    workPhone: str | None = None
    otherPhone: str | None = None
    company: str | None = None
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    state: str | None = None
    postalCode: str | None = None
    country: str | None = None


class OfferPayload(OpenModel):
    """A published Limio offer: ``id`` and ``version`` (40-hex strings upstream)."""

    id: NonEmptyStr
    version: NonEmptyStr


class OrderItem(OpenModel):
    """One line of an order; ``orderItemActionType`` is ``add``/``remove`` on updates."""

    offer: OfferPayload
    quantity: Quantity | None = None
    orderItemActionType: str | None = None


class DiscountOverrides(OpenModel):
    """Overrides applied by an order-level discount."""

    discountType: str | None = None
    durationLength: Number | None = None
    durationType: str | None = None
    percentageDiscount: Number | None = None
    amountDiscount: Number | None = None
    currency: str | None = None
    orderItemsWithSpecifiedDiscount: dict[str, Any] | None = None


class OrderDiscount(OpenModel):
    """An order-level discount (promo code) and its catalog references."""

    name: str | None = None
    productDetails: dict[str, Any] | None = None
    product: dict[str, Any] | None = None
    discountOverrides: DiscountOverrides | None = None


class Payment(OpenModel):
    """Payment details; ``type`` is an open set (zuora, stripe, paypal, direct_debit, ...)."""

    type: NonEmptyStr
    zuora: dict[str, Any] | None = None
    stripe: dict[str, Any] | None = None
    paypal: dict[str, Any] | None = None
    direct_debit: dict[str, Any] | None = None
    gift_code: str | None = None


class SubscriptionRef(OpenModel):
    """Reference to an existing subscription: ``{"id": "sub-..."}`` or ``{"name": ...}``."""

    id: str | None = None
    name: str | None = None
