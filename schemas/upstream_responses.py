"""What the upstream answers (upstream-api.md §5, §6, §7, §10).

Every response model is open: unknown keys are kept, every field the docs do not promise
is optional, and numbers arriving where a string is documented are turned into strings.
The preview's structure depends on the billing plugin, so a ``preview`` or ``schedule``
that does not look like Zuora's is kept as raw JSON instead of failing.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import ConfigDict, Field, field_validator, model_validator

from schemas.upstream_parts import OpenModel

__all__ = [
    "SUBMIT_STATUS_COMPLETE",
    "SUBMIT_STATUS_FAILED",
    "SUBMIT_STATUS_SUBMITTED",
    "UPSTREAM_ID_PATTERN",
    "CreditMemo",
    "ErrorBody",
    "Invoice",
    "LimioOrderObject",
    "OrderListPage",
    "OrderSummary",
    "PreviewResponse",
    "PreviewResult",
    "ScheduleEntry",
    "SubmitResponse",
    "TokenResponse",
    "ZuoraPreview",
]

MAX_UPSTREAM_ID_CHARS: Final = 100
"""Longest upstream order id we accept (INFERRED: the documented ids are ~38 characters); an
answer with a longer one does not parse, so it is never half-stored."""
UpstreamId = Annotated[str, Field(max_length=MAX_UPSTREAM_ID_CHARS)]
UPSTREAM_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"
"""The shape of an upstream id we put in a URL path (documented: ``order-<32 hex>``): letters,
digits, ``-`` and ``_`` only, so it can never climb out of its path segment (``../``, ``/``,
``?``, ``#``, ``%``)."""

SUBMIT_STATUS_COMPLETE: Final = "complete"
SUBMIT_STATUS_SUBMITTED: Final = "submitted"
SUBMIT_STATUS_FAILED: Final = "failed"


class _Response(OpenModel):
    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)


Amount = str | int | float
"""Money as upstream sends it: Zuora mixes strings (``"19.99"``) and numbers."""


class TokenResponse(_Response):
    """Answer of ``POST /oauth2/token`` (client credentials)."""

    access_token: str = Field(min_length=1)
    token_type: str = "Bearer"
    expires_in: float | None = None
    """Seconds the token lives; absent (or 0), callers assume an hour."""
    id_token: str | None = None


class SubmitResponse(_Response):
    """Answer of a successful submit; every field optional, ``status`` an open set."""

    id: UpstreamId | None = None
    order_reference: str | None = None
    status: str | None = None
    external_id: str | None = None
    subscriptionReference: str | None = None
    owner: str | None = None

    @property
    def state(self) -> str | None:
        """The order's upstream status as the submit reported it."""
        return self.status


class ErrorBody(_Response):
    """Body of an error answer: ``{"message": ...}`` at best."""

    message: str | None = None

    @field_validator("message", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, str) else str(value)


class Invoice(_Response):
    """A previewed invoice."""

    amount: Amount | None = None
    amountWithoutTax: Amount | None = None
    taxAmount: Amount | None = None
    targetDate: str | None = None
    invoiceItems: list[dict[str, Any]] | dict[str, Any] | None = None


class CreditMemo(_Response):
    """A previewed credit memo."""

    amount: Amount | None = None
    amountWithoutTax: Amount | None = None
    taxAmount: Amount | None = None
    targetDate: str | None = None
    creditMemoItems: list[dict[str, Any]] | dict[str, Any] | None = None


class PreviewResult(_Response):
    """Invoices and credit memos the order would produce."""

    invoices: list[Invoice] | None = None
    creditMemos: list[CreditMemo] | None = None


class ZuoraPreview(_Response):
    """The Zuora-backed ``preview`` object."""

    success: bool | None = None
    orderNumber: str | None = None
    orderId: str | None = None
    accountNumber: str | None = None
    status: str | None = None
    subscriptions: list[dict[str, Any]] | None = None
    paymentNumber: str | None = None
    paymentId: str | None = None
    paidAmount: Amount | None = None
    previewResult: PreviewResult | None = None


class ScheduleEntry(_Response):
    """One billing date of the preview schedule."""

    date: str | None = None
    schedule_date: str | None = None
    type: str | None = None
    description: str | None = None
    amount: Amount | None = None
    taxAmount: Amount | None = None
    amountWithoutTax: Amount | None = None
    currency: str | None = None
    lineItems: list[dict[str, Any]] | None = None


class PreviewResponse(_Response):
    """Answer of a preview: Zuora's ``preview`` + ``schedule`` when it has that shape.

    ``preview`` and ``schedule`` fall back to the raw JSON value when they do not fit the
    Zuora shape (another billing plugin), so parsing never fails on them.
    """

    preview: Annotated[ZuoraPreview | Any, Field(union_mode="left_to_right")] = None
    schedule: Annotated[list[ScheduleEntry] | Any, Field(union_mode="left_to_right")] = None

    def first_schedule(self) -> ScheduleEntry | None:
        """The first schedule entry (the first payment), if the schedule has Zuora's shape."""
        if isinstance(self.schedule, list) and self.schedule:
            first = self.schedule[0]
            return first if isinstance(first, ScheduleEntry) else None
        return None


class OrderSummary(_Response):
    """An order as listed by ``GET /api/objects/limio/orders``: only a summary (§5, S12)."""

    id: UpstreamId | None = None
    orderState: str | None = None
    status: str | None = None
    order_type: str | None = None
    order_reference: str | None = None
    external_id: str | None = None
    subscriptionReference: str | None = None
    owner: str | None = None
    created: str | None = None
    updated: str | None = None

    @property
    def state(self) -> str | None:
        """``orderState`` if present, else ``status``."""
        return self.orderState or self.status


class LimioOrderObject(OrderSummary):
    """A stored order as read back from ``GET /api/objects/limio/orders/{id}``."""

    id: UpstreamId


_LIST_KEYS: Final = ("orders", "items", "data")


class OrderListPage(_Response):
    """One page of ``GET /api/objects/limio/orders?limit=&queryMore=``, newest first.

    INFERRED: the docs name the ``queryMore`` cursor but not the key holding the list, so
    the first non-empty of ``orders``, ``items``, ``data`` is read into ``items`` (a value
    that is not a list reads as an empty page); entries that are not JSON objects are skipped.
    """

    items: list[OrderSummary] = Field(default_factory=list)
    queryMore: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _find_the_list(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        listed: object = next((value[k] for k in _LIST_KEYS if value.get(k)), [])
        if not isinstance(listed, list):
            listed = []
        rest = {k: v for k, v in value.items() if k not in _LIST_KEYS}
        return {**rest, "items": [item for item in listed if _usable(item)]}


def _usable(item: Any) -> bool:
    """A list entry worth reading: an object whose id (if any) fits (one odd entry must not
    make the whole page unreadable)."""
    if not isinstance(item, dict):
        return False
    upstream_id = item.get("id")
    return not (isinstance(upstream_id, str) and len(upstream_id) > MAX_UPSTREAM_ID_CHARS)
