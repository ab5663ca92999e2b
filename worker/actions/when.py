"""Times an action is asked for, in UTC: naive values are UTC, out-of-range ones refused."""

from __future__ import annotations

from datetime import UTC, datetime

from worker.errors import InvalidInput


def utc(value: datetime | None, field: str) -> datetime | None:
    """``value`` as an aware UTC time (None stays None).

    Raises:
        InvalidInput: the time cannot be expressed in UTC; names ``field``.
    """
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(
            f"{field}: out of range", [{"field": field, "message": str(exc)}]
        ) from None


def due_at(at: datetime | None, *, now: datetime) -> datetime:
    """When an action asked for ``at`` (None: now) runs: never before ``now``.

    Raises:
        InvalidInput: ``at`` is out of range.
    """
    when = utc(at, "at")
    return max(when or now, now)
