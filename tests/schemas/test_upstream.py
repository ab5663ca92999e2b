"""Tests of the upstream order payload contracts (schemas.upstream)."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.upstream import (
    KNOWN_ORDER_TYPES,
    ROOT_FIELD,
    AddOfferOrder,
    CancelSubscriptionOrder,
    ChangeAddressOrder,
    ChangeOfferOrder,
    ChangePaymentOrder,
    NewOrder,
    OrderItem,
    OrderValidationError,
    PassThroughOrder,
    UpdateSubscriptionOrder,
    parse_order,
    validation_errors,
)

SUB = "sub-00000000000000000000000000000001"
OFFER = {"id": "8a512ee55befaea0f7fa962cea9982d0e84f0098", "version": "4dd34671f26f"}


def new_order(**extra: Any) -> dict[str, Any]:
    """A valid ``new`` payload with ``extra`` merged in."""
    payload = {
        "order_type": "new",
        "external_id": "EXT-ORD-12345",
        "orderItems": [{"offer": dict(OFFER), "quantity": 1}],
        "billingDetails": {"firstName": "Ada", "country": "GB"},
        "payment": {"type": "zuora", "zuora": {"refId": "r1"}},
        "checkoutId": "basket-22e3d318",
        "country": "GB",
    }
    return payload | extra


VALID: dict[str, tuple[dict[str, Any], type]] = {
    "new": (new_order(), NewOrder),
    "change_offer": (
        {"order_type": "change_offer", "forSubscription": {"id": SUB}, "offer": {"id": "o"}},
        ChangeOfferOrder,
    ),
    "add_offer": (
        {"order_type": "add_offer", "subscriptionId": SUB, "offer": {}, "quantity": 2},
        AddOfferOrder,
    ),
    "cancel_subscription": (
        {"order_type": "cancel_subscription", "subscriptionId": SUB, "data": {"reason": {}}},
        CancelSubscriptionOrder,
    ),
    "change_address": (
        {"order_type": "change_address", "forSubscription": {"id": SUB}, "address": {}},
        ChangeAddressOrder,
    ),
    "change_payment": (
        {"order_type": "change_payment", "subscriptionId": SUB, "payment": {"type": "stripe"}},
        ChangePaymentOrder,
    ),
    "update_subscription": (
        {
            "order_type": "update_subscription",
            "forSubscription": {"id": SUB},
            "orderItems": [{"offer": dict(OFFER), "orderItemActionType": "add"}],
        },
        UpdateSubscriptionOrder,
    ),
}
PASS_THROUGH = sorted(KNOWN_ORDER_TYPES - set(VALID))


def errors_of(payload: Any) -> list[dict[str, str]]:
    """The field errors ``parse_order`` reports for ``payload`` (fails if it accepts it)."""
    with pytest.raises(OrderValidationError) as info:
        parse_order(payload)
    return validation_errors(info.value)


def fields_of(payload: Any) -> list[str]:
    """Just the field paths of the errors of ``payload``."""
    return [error["field"] for error in errors_of(payload)]


@pytest.mark.parametrize("order_type", sorted(VALID))
def test_each_modelled_type_parses_to_its_model(order_type: str) -> None:
    """A valid payload of each modelled type yields that type's model."""
    payload, model = VALID[order_type]
    assert type(parse_order(payload)) is model


@pytest.mark.parametrize("order_type", PASS_THROUGH)
def test_other_known_types_pass_through_untouched(order_type: str) -> None:
    """Known types without a specific model validate with the base and dump back unchanged."""
    payload = {"order_type": order_type, "subscriptionId": SUB, "invoice": {"id": "i", "n": 1}}
    order = parse_order(payload)
    assert type(order) is PassThroughOrder
    assert order.model_dump(mode="json", exclude_unset=True, by_alias=True) == payload


def test_known_types_cover_the_documented_list() -> None:
    """KNOWN_ORDER_TYPES lists every order type named in upstream-api.md §4.2."""
    documented = {
        *VALID,
        *("add_charge", "cancel_intent", "change_external_payment", "renew"),
        *("gift_refund", "pay_invoice", "refund"),
    }
    assert documented == KNOWN_ORDER_TYPES


@pytest.mark.parametrize("order_type", sorted(VALID))
def test_round_trip_keeps_unknown_fields(order_type: str) -> None:
    """Extra keys, nested and underscored ones included, survive a validate/dump round trip."""
    payload = copy.deepcopy(VALID[order_type][0])
    payload["__spec_version"] = "2"
    payload["customFields"] = {"campaign": "x", "n": [1, 2.5]}
    payload["orderDate"] = "2020-01-01T00:00:00.000Z"
    payload["someFutureField"] = {"deep": {"er": None}}
    if "orderItems" in payload:
        payload["orderItems"][0]["offer"]["name"] = "Digital"
        payload["orderItems"][0]["extraItemKey"] = True
    dumped = parse_order(payload).model_dump(mode="json", exclude_unset=True, by_alias=True)
    assert dumped == payload


@pytest.mark.parametrize(
    "field", ["orderItems", "billingDetails", "payment", "checkoutId", "country"]
)
def test_new_requires_its_fields(field: str) -> None:
    """A ``new`` order missing a required field is refused with that field named."""
    payload = new_order()
    del payload[field]
    assert errors_of(payload) == [{"field": field, "message": "Field required"}]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"orderItems": []}, "orderItems"),
        ({"checkoutId": ""}, "checkoutId"),
        ({"country": ""}, "country"),
        ({"orderItems": [{"offer": {"version": "v"}}]}, "orderItems.0.offer.id"),
        ({"orderItems": [{"offer": {"id": "i"}}]}, "orderItems.0.offer.version"),
        ({"orderItems": [{"offer": OFFER, "quantity": "2"}]}, "orderItems.0.quantity"),
        ({"orderItems": [{"offer": OFFER, "quantity": True}]}, "orderItems.0.quantity"),
        ({"orderItems": [{"offer": OFFER, "quantity": -1}]}, "orderItems.0.quantity"),
        ({"orderItems": [{"offer": OFFER, "quantity": -0.5}]}, "orderItems.0.quantity"),
        ({"payment": {"zuora": {}}}, "payment.type"),
        ({"billingDetails": "Ada"}, "billingDetails"),
        ({"billingDetails": {"email": 5}}, "billingDetails.email"),
        ({"process_immediately": "yes"}, "process_immediately"),
        ({"orderDate": "yesterday"}, "orderDate"),
        ({"external_id": 12345}, "external_id"),
    ],
)
def test_new_field_errors_name_the_path(change: dict[str, Any], field: str) -> None:
    """Invalid values are refused, without coercion, with a dotted/indexed field path."""
    assert fields_of(new_order(**change)) == [field]


@pytest.mark.parametrize(
    ("order_type", "field"),
    [
        ("change_offer", "forSubscription.id"),
        ("add_offer", "subscriptionId"),
        ("cancel_subscription", "subscriptionId"),
        ("change_address", "forSubscription.id"),
        ("change_payment", "subscriptionId"),
    ],
)
def test_change_orders_must_name_a_subscription(order_type: str, field: str) -> None:
    """A change-type order without any subscription reference names the field to add."""
    payload = {
        k: v
        for k, v in VALID[order_type][0].items()
        if k not in ("forSubscription", "subscriptionId")
    }
    payload["forSubscription"] = {"name": "not an id"}
    errors = errors_of(payload)
    assert [e["field"] for e in errors] == [field]
    assert "subscriptionId" in errors[0]["message"]


@pytest.mark.parametrize(
    "reference",
    [
        {"forSubscription": {"id": SUB}},
        {"subscriptionId": SUB},
        {"subscriptionRef": "2TJ25TK632EG"},
    ],
)
def test_cancel_accepts_any_reference(reference: dict[str, Any]) -> None:
    """A cancellation may name its subscription by forSubscription.id, id or reference."""
    order = parse_order({"order_type": "cancel_subscription", **reference})
    assert order.subscription_reference() in (SUB, "2TJ25TK632EG")


def test_subscription_id_alone_is_enough_for_change_offer() -> None:
    """``subscriptionId`` satisfies the reference rule as well as ``forSubscription.id``."""
    order = parse_order({"order_type": "change_offer", "subscriptionId": SUB})
    assert order.subscription_reference() == SUB


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"order_type": "change_address", "subscriptionId": SUB}, ["address"]),
        ({"order_type": "change_payment", "subscriptionId": SUB}, ["payment"]),
        (
            {"order_type": "update_subscription", "subscriptionId": SUB},
            ["forSubscription", "orderItems"],
        ),
        (
            {"order_type": "update_subscription", "forSubscription": {"id": SUB}, "orderItems": []},
            ["orderItems"],
        ),
    ],
)
def test_change_orders_require_their_fields(payload: dict[str, Any], fields: list[str]) -> None:
    """change_address, change_payment and update_subscription need their specific fields."""
    assert fields_of(payload) == fields


@pytest.mark.parametrize(
    ("payload", "message_part"),
    [
        ({}, "Field required"),
        ({"order_type": None}, "Field required"),
        ({"order_type": 3}, "valid string"),
        ({"order_type": "new_thing"}, "Unknown order type"),
    ],
)
def test_order_type_errors_name_order_type(payload: dict[str, Any], message_part: str) -> None:
    """A missing, non-string or unknown order_type is an error on ``order_type``."""
    errors = errors_of(payload)
    assert [e["field"] for e in errors] == ["order_type"]
    assert message_part in errors[0]["message"]


@pytest.mark.parametrize("payload", [[], "new", 5, None])
def test_non_object_payload_is_a_root_error(payload: Any) -> None:
    """A payload that is not a JSON object is refused as a whole."""
    assert fields_of(payload) == [ROOT_FIELD]


def test_validation_errors_accepts_a_pydantic_error() -> None:
    """validation_errors also flattens a raw pydantic ValidationError."""
    with pytest.raises(ValidationError) as info:
        OrderItem.model_validate({"offer": {"id": "x"}})
    assert validation_errors(info.value) == [
        {"field": "offer.version", "message": "Field required"}
    ]


def test_error_message_lists_every_field() -> None:
    """The exception text names each failing field (useful in logs and 400 bodies)."""
    with pytest.raises(OrderValidationError) as info:
        parse_order({"order_type": "new", "country": "GB"})
    assert "billingDetails: Field required" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_ten_thousand_orders_validate_quickly() -> None:
    """A 10,000-order batch validates in well under the intake's time budget."""
    payloads = [new_order(external_id=f"E{i}") for i in range(10_000)]
    started = time.perf_counter()
    for payload in payloads:
        parse_order(payload)
    assert time.perf_counter() - started < 3.0
