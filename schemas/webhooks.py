"""Wire contracts of webhooks: endpoints a caller registers, deliveries, and the event body.

A webhook is a ``POST`` of :class:`WebhookEvent` signed per Standard Webhooks
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) with the endpoint's secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from schemas.batches import BatchObject
from schemas.intake import EXAMPLE_VIEW, OrderStatus, OrderView, examples

BATCH_EVENT_TYPES: frozenset[str] = frozenset({"batch.completed", "batch.halted"})
EVENT_TYPES: frozenset[str] = frozenset(
    {
        "order.*",
        *(f"order.{status}" for status in get_args(OrderStatus)),
        "batch.*",
        *BATCH_EVENT_TYPES,
    }
)
"""Webhook event types an endpoint can subscribe to (``order.*``, ``batch.*``: all of a kind).
An endpoint that lists only batch types gets one event per batch, none per order."""


def _known_event_type(value: str) -> str:
    if value not in EVENT_TYPES:
        raise ValueError(
            "unknown event type; expected order.*, order.<status>, batch.* or batch.<event>"
        )
    return value


EventType = Annotated[str, StringConstraints(max_length=60), AfterValidator(_known_event_type)]


class WebhookEndpointCreate(BaseModel):
    """A URL to POST the caller's order events to; ``event_types`` filters them (null: all)."""

    model_config = ConfigDict(
        extra="forbid",
        **examples(
            {
                "url": "https://partner.example.com/hooks/orders",
                "event_types": ["order.complete", "order.failed"],
            }
        ),
    )

    url: Annotated[
        str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[^\x00-\x20\x7f]*$")
    ]
    event_types: list[EventType] | None = Field(default=None, max_length=20)


class WebhookEndpointView(BaseModel):
    """A registered endpoint (its secret is shown only when it is created)."""

    id: str
    url: str
    event_types: list[str] | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpointView):
    """The new endpoint with its signing secret: keep it, it is not shown again."""

    secret: str = Field(examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


class WebhookEndpointPage(BaseModel):
    items: list[WebhookEndpointView]
    next_cursor: str | None = None


class WebhookAttemptView(BaseModel):
    """One try at delivering: when, the receiver's status code, latency, error."""

    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None


class WebhookDeliveryView(BaseModel):
    """One event sent (or to be sent) to an endpoint, with every attempt."""

    id: str
    order_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed", "cancelled"]
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any]
    attempts: list[WebhookAttemptView]


class WebhookDeliveryPage(BaseModel):
    """A page of deliveries, newest first."""

    items: list[WebhookDeliveryView]
    next_cursor: str | None


class WebhookEvent(BaseModel):
    """The body of a webhook POST, signed per Standard Webhooks."""

    model_config = examples(
        {
            "type": "order.complete",
            "timestamp": "2025-01-31T12:00:03Z",
            "data": {**EXAMPLE_VIEW, "status": "complete"},
        }
    )

    type: str = Field(examples=["order.complete"])
    timestamp: datetime
    data: OrderView


class BatchWebhookEvent(BaseModel):
    """The body of a ``batch.completed`` or ``batch.halted`` webhook: the batch object."""

    type: Literal["batch.completed", "batch.halted"]
    timestamp: datetime
    data: BatchObject
