"""Wire contracts of batches (design.md section 6): the options a batch is posted with, and the
batch object callers read, list and receive in ``batch.*`` webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BatchState = Literal["running", "awaiting_approval", "halted", "cancelled", "completed"]
BatchMode = Literal["run", "preview_first"]


class HaltOn(BaseModel):
    """Stop the batch once ``after`` of its orders are final and more than ``failed_share``
    of those failed or were rejected for the same reason."""

    model_config = ConfigDict(extra="forbid")

    failed_share: float = Field(gt=0, le=1)
    after: int = Field(ge=1, le=1_000_000)


class BatchOptions(BaseModel):
    """The batch-level fields of ``POST /v1/orders/batch`` beside ``orders``."""

    mode: BatchMode = "run"
    halt_on: HaltOn | None = None


class HaltSample(BaseModel):
    order_id: str
    status: str
    reason: str | None
    message: str | None


class Halt(BaseModel):
    """Why a batch stopped itself: the shared failure, and a few of the orders that met it."""

    reason: str
    status: str
    failed: int
    final: int
    failed_share: float
    at: datetime
    sample: list[HaltSample]


class PreviewFailure(BaseModel):
    order_id: str
    index: int | None
    status: str
    reason: str | None
    message: str | None


class Totals(BaseModel):
    """What the previews of a preview-first batch add up to (amounts as decimal strings)."""

    by_currency: dict[str, str]
    priced: int
    unpriced: int
    preview_failures: int
    failures: list[PreviewFailure]


class BatchObject(BaseModel):
    """A batch: its state, counts by status (``total`` and each status with an order), the
    pace of its orders' ends, and what stopped or priced it."""

    id: str
    object: Literal["batch"] = "batch"
    state: BatchState
    mode: BatchMode
    created_at: datetime
    state_at: datetime
    counts: dict[str, int]
    final: int
    first_final_at: datetime | None
    last_final_at: datetime | None
    final_per_s: float
    eta_s: float | None
    halt_on: HaltOn | None
    halt: Halt | None
    totals: Totals | None
    completed_at: datetime | None


class BatchPage(BaseModel):
    items: list[BatchObject]
    next_cursor: str | None = None


class BatchActionResult(BaseModel):
    """The batch after an action, and how many orders the action moved."""

    batch: BatchObject
    cancelled: int = 0
    released: int = 0
