"""``Retry-After`` (delta-seconds or HTTP-date) as a bounded number of seconds. Pure.

Shared by the upstream classifier and webhook delivery: whatever a server sends (``1e12``,
``inf``, ``nan``, negative, a date in the year 9999, garbage), the answer is ``None`` or a
finite number in ``[0, RETRY_AFTER_MAX_S]``, never an exception.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# A server may ask us to wait, not to give up: a day is longer than any retry schedule here.
RETRY_AFTER_MAX_S = 24 * 3600.0


def parse_retry_after(
    value: str | None, *, now: datetime | None = None, max_s: float = RETRY_AFTER_MAX_S
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, clamped to ``[0, max_s]``.

    None when the value is absent, negative, not a number or not a date.
    """
    if not value:
        return None
    value = value.strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until_date(value, now or datetime.now(UTC))
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, max_s)


def _seconds_until_date(value: str, now: datetime) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 5322 "-0000": UTC with no claim about the local zone.
        when = when.replace(tzinfo=UTC)
    try:
        return max(0.0, (when - now).total_seconds())
    except OverflowError:
        return None
