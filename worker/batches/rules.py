"""Batch decisions as pure functions of counts and settings (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from schemas.batches import BatchOptions, HaltOn
from schemas.upstream_responses import PreviewResponse
from worker.errors import InvalidInput
from worker.states import TERMINAL, Status

S = Status
FINAL: frozenset[str] = frozenset(str(s) for s in TERMINAL)
FAILED: frozenset[str] = frozenset({str(S.FAILED), str(S.REJECTED)})
PREVIEW_PHASE: frozenset[str] = frozenset({str(S.RECEIVED), str(S.PREVIEWING)})

RUNNING = "running"
AWAITING_APPROVAL = "awaiting_approval"
HALTED = "halted"
CANCELLED = "cancelled"
COMPLETED = "completed"
OPEN_STATES: frozenset[str] = frozenset({RUNNING, AWAITING_APPROVAL, HALTED})
"""Stored states a sweep still looks at (a cancelled batch's orders may still be finishing)."""

HOLD_REASONS: dict[str, str] = {
    AWAITING_APPROVAL: "awaiting_approval",
    HALTED: "batch_halted",
    CANCELLED: "batch_cancelled",
}
"""The ``reason`` an order carries while its batch holds it back from being submitted."""

RATE_WINDOW_S = 60
SAMPLE_SIZE = 5


def parse_options(body: Mapping[str, Any], *, default_halt_on: HaltOn | None) -> BatchOptions:
    """The batch-level options of a batch body; 422 naming the field when they are wrong."""
    raw = {k: body[k] for k in ("mode", "halt_on") if k in body}
    try:
        options = BatchOptions.model_validate(raw)
    except ValidationError as exc:
        fields = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        raise InvalidInput(f"invalid batch options: {fields[0]['field']}", fields) from exc
    if options.halt_on is None and default_halt_on is not None:
        options.halt_on = default_halt_on
    return options


def initial_state(options: BatchOptions) -> str:
    return AWAITING_APPROVAL if options.mode == "preview_first" else RUNNING


def final_count(counts: Mapping[str, int]) -> int:
    return sum(n for status, n in counts.items() if status in FINAL)


def shown_state(stored: str, counts: Mapping[str, int]) -> str:
    """The state a caller sees.

    A running batch whose orders are all final is ``completed`` at once (the sweep records it
    and sends the webhook); a preview-first batch is ``running`` while previews are still out,
    and ``awaiting_approval`` once every order is previewed or final.
    """
    total = counts.get("total", 0)
    if stored == RUNNING and final_count(counts) >= total:
        return COMPLETED
    if stored == AWAITING_APPROVAL and any(counts.get(s, 0) > 0 for s in PREVIEW_PHASE):
        return RUNNING
    return stored


def eta_s(state: str, remaining: int, final_per_s: float) -> float | None:
    """Seconds until every order is final at the pace of the last minute (running only)."""
    if state != RUNNING or remaining <= 0 or final_per_s <= 0:
        return None
    return round(remaining / final_per_s, 1)


@dataclass(frozen=True, slots=True)
class HaltVerdict:
    status: str
    reason: str
    failed: int
    final: int

    @property
    def share(self) -> float:
        return self.failed / self.final if self.final else 0.0


def may_halt(halt_on: HaltOn | None, counts: Mapping[str, int]) -> bool:
    """Whether the counts alone allow a halt (the cheap check before counting by reason)."""
    if halt_on is None:
        return False
    final = final_count(counts)
    failed = sum(counts.get(s, 0) for s in FAILED)
    return final >= halt_on.after and failed / final > halt_on.failed_share


def halt_verdict(
    halt_on: HaltOn | None, final: int, failures: Iterable[tuple[str, str | None, int]]
) -> HaltVerdict | None:
    """The shared failure that stops the batch, if any: at least ``after`` orders final, and
    more than ``failed_share`` of them failed or were rejected for the same reason.

    ``failures`` is ``(status, reason, count)`` for the batch's failed and rejected orders.
    """
    if halt_on is None or final < halt_on.after or final <= 0:
        return None
    worst = max(failures, key=lambda f: f[2], default=None)
    if worst is None:
        return None
    status, reason, n = worst
    if n / final <= halt_on.failed_share:
        return None
    return HaltVerdict(status, reason or status, n, final)


def preview_amount(preview: Any) -> tuple[str, Decimal] | None:
    """The first payment of a preview (``schedule[0]``: currency and amount), if it has one."""
    if not isinstance(preview, dict):
        return None
    try:
        first = PreviewResponse.model_validate(preview).first_schedule()
    except ValidationError:
        return None
    if first is None or first.currency is None or first.amount is None:
        return None
    try:
        amount = Decimal(str(first.amount))
    except InvalidOperation:
        return None
    if not amount.is_finite():
        return None
    return str(first.currency).upper(), amount


def add_totals(by_currency: dict[str, Decimal], amount: tuple[str, Decimal] | None) -> bool:
    """Add one preview's amount; returns whether it had one."""
    if amount is None:
        return False
    currency, value = amount
    by_currency[currency] = by_currency.get(currency, Decimal(0)) + value
    return True
