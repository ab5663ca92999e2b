"""Tests of the upstream response contracts (token, submit, preview, errors, objects)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.upstream import (
    SUBMIT_STATUS_COMPLETE,
    SUBMIT_STATUS_FAILED,
    SUBMIT_STATUS_SUBMITTED,
    ErrorBody,
    LimioOrderObject,
    OrderListPage,
    PreviewResponse,
    SubmitResponse,
    TokenResponse,
    ZuoraPreview,
)

# Shape of the Zuora-backed example of upstream-api.md §5.2 (mixed string/number amounts).
ZUORA_PREVIEW: dict[str, Any] = {
    "preview": {
        "success": True,
        "orderNumber": "O-00001",
        "accountNumber": "A-00001",
        "status": "active",
        "subscriptions": [{"status": "active", "subscriptionId": "x", "subscriptionNumber": "S-1"}],
        "paidAmount": "19.99",
        "previewResult": {
            "invoices": [
                {
                    "amount": 19.99,
                    "amountWithoutTax": 19.99,
                    "targetDate": "2020-01-01",
                    "taxAmount": 0.0,
                    "invoiceItems": {"additionalInfo": {"quantity": 1}, "unitPrice": 19.99},
                }
            ],
            "creditMemos": [{"amount": -5, "creditMemoItems": [{"chargeName": "c"}]}],
        },
    },
    "schedule": [
        {
            "date": "2020-01-01",
            "type": "Schedule",
            "amount": "19.99",
            "taxAmount": 0,
            "amountWithoutTax": "19.99",
            "currency": "GBP",
            "lineItems": [{"productName": "Digital", "amountWithoutTax": 19.99}],
            "futureKey": 1,
        }
    ],
    "vendorExtra": {"a": 1},
}


def test_token_response_parses_the_documented_example() -> None:
    """The documented token answer parses; id_token is optional and extras are kept."""
    token = TokenResponse.model_validate(
        {"access_token": "eyJ", "token_type": "Bearer", "expires_in": 3600, "scope": "x"}
    )
    assert (token.expires_in, token.id_token, token.model_extra) == (3600, None, {"scope": "x"})


def test_token_response_requires_an_access_token() -> None:
    """A token answer without access_token is refused."""
    with pytest.raises(ValidationError):
        TokenResponse.model_validate({"token_type": "Bearer", "expires_in": 3600})


@pytest.mark.parametrize("status", [SUBMIT_STATUS_COMPLETE, SUBMIT_STATUS_SUBMITTED, "queued"])
def test_submit_status_is_an_open_set(status: str) -> None:
    """Any status string is accepted, known or not."""
    assert SubmitResponse.model_validate({"status": status}).status == status


def test_submit_response_is_all_optional_and_open() -> None:
    """An empty submit answer parses, extras are kept, numbers become strings."""
    assert SubmitResponse.model_validate({}).id is None
    response = SubmitResponse.model_validate({"id": "order-1", "owner": 7, "traceId": "t"})
    assert (response.owner, response.model_extra) == ("7", {"traceId": "t"})
    assert SUBMIT_STATUS_FAILED == "failed"


def test_zuora_preview_parses_with_mixed_amounts() -> None:
    """The Zuora-shaped preview parses, keeping strings as strings and numbers as numbers."""
    preview = PreviewResponse.model_validate(ZUORA_PREVIEW)
    assert isinstance(preview.preview, ZuoraPreview)
    assert preview.preview.paidAmount == "19.99"
    assert preview.preview.previewResult is not None
    assert preview.preview.previewResult.invoices[0].amount == 19.99
    first = preview.first_schedule()
    assert first is not None and (first.amount, first.currency) == ("19.99", "GBP")
    dumped = preview.model_dump(mode="json", exclude_unset=True)
    assert dumped == ZUORA_PREVIEW


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"preview": [1, 2], "schedule": {"weird": True}},
        {"preview": {"paidAmount": {"value": 1}}, "schedule": "later"},
        {"preview": None, "schedule": [None]},
        {"result": {"stripe": "shape"}},
    ],
)
def test_unexpected_preview_shapes_do_not_fail(body: dict[str, Any]) -> None:
    """A preview from another billing plugin is kept as raw JSON instead of failing."""
    preview = PreviewResponse.model_validate(body)
    assert preview.model_dump(mode="json", exclude_unset=True) == body
    assert not isinstance(preview.preview, ZuoraPreview)
    assert preview.first_schedule() is None


@pytest.mark.parametrize(
    ("body", "message"),
    [({"message": "Not found."}, "Not found."), ({}, None), ({"message": 502}, "502")],
)
def test_error_body_is_lenient(body: dict[str, Any], message: str | None) -> None:
    """Error bodies parse whatever their message looks like."""
    assert ErrorBody.model_validate(body).message == message


def test_stored_order_object_parses_with_extras() -> None:
    """A stored order object parses; ``state`` reads orderState, else status."""
    body = {
        "id": "order-4dd195c3eee4297e33aecb5436cf8092",
        "orderState": "submitted",
        "external_id": "EXT-1",
        "__spec_version": "2",
        "orderItems": [],
    }
    order = LimioOrderObject.model_validate(body)
    assert (order.state, order.model_extra) == (
        "submitted",
        {"__spec_version": "2", "orderItems": []},
    )
    assert LimioOrderObject.model_validate({"id": "o", "status": "complete"}).state == "complete"


@pytest.mark.parametrize("key", ["orders", "items", "data"])
def test_order_list_page_finds_the_list_under_any_inferred_key(key: str) -> None:
    """The list's key is undocumented: orders, items or data; non-objects are skipped."""
    body = {key: [{"id": "order-1", "external_id": "E-1", "orderState": "submitted"}, "x"]}
    page = OrderListPage.model_validate({**body, "queryMore": "abc+/=", "totalSize": 1})
    assert [(o.id, o.external_id, o.state) for o in page.items] == [("order-1", "E-1", "submitted")]
    assert (page.queryMore, page.model_extra) == ("abc+/=", {"totalSize": 1})


@pytest.mark.parametrize("body", [{}, {"orders": {"id": "o"}}, {"items": None, "queryMore": None}])
def test_order_list_page_without_a_list_is_empty(body: dict[str, Any]) -> None:
    assert OrderListPage.model_validate(body).items == []


def test_listed_summaries_need_no_id() -> None:
    """A summary is whatever the list shows; only a stored object read by id must have one."""
    page = OrderListPage.model_validate({"items": [{"external_id": "E-2"}]})
    assert page.items[0].id is None and page.items[0].external_id == "E-2"
