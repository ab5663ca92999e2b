"""Retry-After is parsed once, bounded, and never raises: upstream and webhooks share it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.retry_after import RETRY_AFTER_MAX_S, parse_retry_after
from worker.upstream.classify import error_for_status

NOW = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value,expected",
    [
        ("3", 3.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("1e12", RETRY_AFTER_MAX_S),
        ("inf", RETRY_AFTER_MAX_S),
        ("9" * 400, RETRY_AFTER_MAX_S),
        ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_MAX_S),
        ("Fri, 31 Jan 2025 12:00:30 GMT", 30.0),
        ("Fri, 31 Jan 2025 12:00:30 -0000", 30.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("-5", None),
        ("-inf", None),
        ("nan", None),
        ("soon", None),
        ("Fri, 31 Dec 99999 23:59:59 GMT", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_bounded_and_never_raises(value: str | None, expected: float | None):
    """Absurd values are clamped to a day or ignored; plain ones pass through."""
    assert parse_retry_after(value, now=NOW) == expected


def test_upstream_classifier_uses_the_bounded_parser():
    """A 429 with Retry-After: 1e12 waits at most a day."""
    error = error_for_status(429, None, "1e12")
    assert error is not None and error.retry_after_s == RETRY_AFTER_MAX_S
