"""Wire contracts of the intake API (design.md section 6): what callers send and receive.

These models document the API (OpenAPI at ``/docs``); the service builds its large answers as
plain dicts of exactly these shapes and serialises them with orjson. The order payload itself
is the upstream's (``schemas.upstream``): callers send it unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.upstream import OrderPayload
from schemas.upstream_responses import UPSTREAM_ID_PATTERN

OrderStatus = Literal[
    "received",
    "previewing",
    "previewed",
    "submitting",
    "submitted",
    "complete",
    "rejected",
    "failed",
    "submit_unknown",
    "cancelled",
]
"""Every order status a caller can see (kept equal to ``worker.states.Status`` by a test)."""

RetryableStatus = Literal["failed", "submit_unknown"]

TextParam = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
"""A short text filter: no NUL character (PostgreSQL text cannot hold one)."""

EXAMPLE_ORDER: dict[str, Any] = {
    "order_type": "new",
    "external_id": "partner-42-0001",
    "orderItems": [{"offer": {"id": "a" * 40, "version": "b" * 40}, "quantity": 1}],
    "billingDetails": {"firstName": "Ada", "lastName": "Lovelace", "country": "GB"},
    "payment": {"type": "zuora"},
    "checkoutId": "basket-0001",
    "country": "GB",
}

EXAMPLE_VIEW: dict[str, Any] = {
    "id": "ord_0191d2c4a1b2c3d4e5f60718293a4b5c6d7e",
    "status": "received",
    "reason": None,
    "message": None,
    "attempts": 0,
    "next_attempt_at": None,
    "external_id": "partner-42-0001",
    "batch_id": None,
    "order_type": "new",
    "created_at": "2025-01-31T12:00:00.123456Z",
    "updated_at": "2025-01-31T12:00:00.123456Z",
    "preview": None,
    "upstream": None,
}


def examples(*values: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(values)})


class FieldError(BaseModel):
    """One problem with the request: a dotted field path and what is wrong with it."""

    field: str = Field(examples=["orderItems.0.offer.id"])
    message: str = Field(examples=["Field required"])


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer; ``fields`` names the offending fields (may be empty)."""

    model_config = examples(
        {
            "message": "invalid order: payment: Field required",
            "fields": [{"field": "payment", "message": "Field required"}],
        }
    )

    message: str
    fields: list[FieldError] = Field(default_factory=list)


class UpstreamView(BaseModel):
    """The upstream's answer to the submit, as recorded."""

    id: str | None
    order_reference: str | None
    status: str | None
    subscriptionReference: str | None
    owner: str | None


class OrderView(BaseModel):
    """The order view: the same shape in answers, lists, webhooks and the CLI."""

    model_config = examples(EXAMPLE_VIEW)

    id: str
    status: OrderStatus
    reason: str | None = Field(description="Why the order is in its status (e.g. upstream_502)")
    message: str | None = Field(default=None, description="Upstream or operator message, if any")
    attempts: int
    next_attempt_at: datetime | None
    external_id: str | None
    batch_id: str | None
    order_type: str | None = None
    created_at: datetime
    updated_at: datetime
    preview: dict[str, Any] | None = Field(description="The upstream preview result")
    upstream: UpstreamView | None = Field(description="Null until the order was submitted")


class EventView(BaseModel):
    """One status change of an order."""

    model_config = ConfigDict(populate_by_name=True)

    at: datetime
    from_: OrderStatus | None = Field(alias="from")
    to: OrderStatus
    attempt: int
    reason: str | None
    status_code: int | None = Field(description="Upstream HTTP status behind the change, if any")
    message: str | None
    actor: str | None


class OrderPage(BaseModel):
    """A page of orders, newest first; pass ``next_cursor`` back as ``cursor`` (null: end)."""

    items: list[OrderView]
    next_cursor: str | None


class EventPage(BaseModel):
    """A page of an order's history, oldest first; ``next_cursor`` is null on the last page."""

    items: list[EventView]
    next_cursor: str | None = None


class BatchRequest(BaseModel):
    """Up to ``ORDERS_MAX_BATCH_ITEMS`` upstream order payloads."""

    model_config = examples({"orders": [EXAMPLE_ORDER]})

    orders: list[OrderPayload] = Field(min_length=1)


class BatchItemError(BaseModel):
    """Why one item of a batch was not accepted."""

    message: str
    fields: list[FieldError]


class BatchOrderResult(BaseModel):
    index: int
    order: OrderView


class BatchErrorResult(BaseModel):
    index: int
    error: BatchItemError


class BatchResponse(BaseModel):
    """One result per item, in request order: the order view or the item's error."""

    model_config = examples(
        {
            "batch_id": "bat_0191d2c4a1b2c3d4e5f60718293a4b5c6d7e",
            "results": [
                {"index": 0, "order": {**EXAMPLE_VIEW, "batch_id": "bat_0191d2c4a1b2c3d4e5f6"}},
                {
                    "index": 1,
                    "error": {
                        "message": "invalid order: payment: Field required",
                        "fields": [{"field": "payment", "message": "Field required"}],
                    },
                },
            ],
        }
    )

    batch_id: str
    results: list[BatchOrderResult | BatchErrorResult]


class RetryRequest(BaseModel):
    """Which of the caller's orders to retry, and when (default: now)."""

    model_config = ConfigDict(
        extra="forbid",
        **examples(
            {"status": "failed", "reason": "upstream_502"},
            {"batch_id": "bat_0191d2c4a1b2c3d4e5f60718293a4b5c6d7e", "at": "2025-02-01T03:00:00Z"},
        ),
    )

    status: RetryableStatus = "failed"
    reason: TextParam | None = None
    batch_id: TextParam | None = None
    external_id: TextParam | None = None
    at: datetime | None = Field(default=None, description="ISO 8601; naive times are UTC")
    dry_run: bool = Field(
        default=False,
        description="Only count: answers how many orders would be retried and a sample of ids",
    )


class OperatorRetryRequest(RetryRequest):
    """Which orders of any caller to retry (operator keys only), and when."""

    model_config = ConfigDict(
        extra="forbid",
        **examples({"status": "failed", "reason": "upstream_502", "dry_run": True}),
    )

    caller_id: TextParam | None = Field(default=None, description="Only this caller's orders")


class ResolveRequest(BaseModel):
    """An operator's decision on a held ``submit_unknown`` order: exactly one of the two."""

    model_config = ConfigDict(
        extra="forbid",
        **examples({"upstream_id": "order-1f2e3d4c5b6a"}, {"not_created": True}),
    )

    upstream_id: (
        Annotated[str, StringConstraints(min_length=1, pattern=UPSTREAM_ID_PATTERN)] | None
    ) = Field(
        default=None,
        description="Found upstream as this order id, e.g. order-<32 hex> (letters, digits, "
        "- and _ only; its external_id must match)",
    )
    not_created: bool = Field(default=False, description="Not created upstream: re-submit it")

    @model_validator(mode="after")
    def _exactly_one(self) -> ResolveRequest:
        if (self.upstream_id is None) == (not self.not_created):
            raise ValueError("give exactly one of upstream_id or not_created: true")
        return self


class RetryOneRequest(BaseModel):
    """When to retry one order (default: now)."""

    model_config = ConfigDict(extra="forbid", **examples({"at": "2025-02-01T03:00:00Z"}))

    at: datetime | None = Field(default=None, description="ISO 8601; naive times are UTC")


class RetryResponse(BaseModel):
    """How many orders were scheduled; a dry run also tells how many match, and some ids."""

    model_config = examples({"scheduled": 3}, {"scheduled": 0, "matched": 3, "sample": ["ord_..."]})

    scheduled: int
    matched: int | None = None
    sample: list[str] | None = None


class CallerCountsView(BaseModel):
    """One caller's orders by status (``GET /v1/operator/status``)."""

    id: str
    name: str
    revoked: bool = False
    counts: dict[str, int] = Field(examples=[{"complete": 980, "failed": 20}])
    total: int


class UpstreamStateView(BaseModel):
    """The upstream call budget as the fleet left it in Redis."""

    breaker: str = Field(examples=["closed"], description="closed, open or half_open")
    limit: int = Field(description="The learned limit on calls in flight (at most the ceiling)")
    ceiling: int = Field(description="ORDERS_UPSTREAM_MAX_IN_FLIGHT")
    in_flight: int
    paused_s: float = Field(description="Pause left from a Retry-After")
    calls: dict[str, float] = Field(
        default_factory=dict,
        description="Fleet counters: ok, dropped (refused), slow, failed, wait_s",
    )


class OperatorStatusResponse(BaseModel):
    """Every caller's counts and the upstream's state (null while Redis cannot be read)."""

    callers: list[CallerCountsView]
    upstream: UpstreamStateView | None
