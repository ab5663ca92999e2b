"""What one delivery attempt means: a coarse error class, and what happens next. Pure.

Callers see the class (``timeout``, ``connect_error``, ``tls_error``, ``refused_target``,
``unresolved``, ``connection_lost``, ``invalid_url``, ``internal_error``, ``http_<status>``),
never the raw error, which could describe internal hosts; the raw error goes to our logs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpcore

from worker.webhooks.targets import TargetRefused, TargetUnresolved

# Seconds to wait before attempt n+1 after attempt n failed (like Svix: up to ~28 h in all).
SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
PERMANENT = frozenset({"refused_target", "invalid_url"})


@dataclass(frozen=True)
class Decision:
    """``outcome``: pending / delivered / failed; ``delay_s`` before the next attempt."""

    outcome: str
    delay_s: float | None = None
    disable_endpoint: str | None = None


def error_class(exc: BaseException) -> str:
    """The coarse class of a failed attempt's exception."""
    if isinstance(exc, TargetUnresolved):
        return "unresolved"
    if isinstance(exc, TargetRefused):
        return "refused_target"
    if isinstance(exc, httpcore.TimeoutException):
        return "timeout"
    if isinstance(exc, httpcore.ConnectError):
        return "tls_error" if isinstance(exc.__cause__, ssl.SSLError) else "connect_error"
    if isinstance(exc, httpcore.UnsupportedProtocol):
        return "invalid_url"
    if isinstance(exc, httpcore.NetworkError | httpcore.ProtocolError):
        return "connection_lost"
    if isinstance(exc, ssl.SSLError):
        return "tls_error"
    return "internal_error"


def next_delay_s(attempts: int, max_attempts: int, retry_after_s: float | None) -> float | None:
    """Delay before the next attempt after ``attempts`` failed ones; None: give up."""
    if attempts >= max_attempts:
        return None
    delay = SCHEDULE_S[min(attempts - 1, len(SCHEDULE_S) - 1)]
    return max(delay, retry_after_s or 0.0)


def decide(
    status_code: int | None,
    error: str | None,
    *,
    attempts: int,
    max_attempts: int,
    retry_after_s: float | None,
) -> Decision:
    """What follows attempt number ``attempts`` (an answer ``status_code``, or ``error``)."""
    if status_code is not None and 200 <= status_code < 300:
        return Decision("delivered")
    if status_code == 410:
        return Decision("failed", disable_endpoint="receiver answered 410 Gone")
    if error in PERMANENT:
        return Decision("failed")
    delay = next_delay_s(attempts, max_attempts, retry_after_s)
    return Decision("pending", delay) if delay is not None else Decision("failed")
