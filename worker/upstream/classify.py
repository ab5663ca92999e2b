"""Decide what an upstream answer or transport failure means. Pure: no I/O.

Status codes and exception types decide; message text never does.
"""

from __future__ import annotations

from typing import Any

import httpx

from worker.errors import (
    AmbiguousError,
    AuthError,
    PermanentError,
    RetryableError,
    UpstreamError,
)
from worker.retry_after import parse_retry_after

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

# Failures after which the request can't have reached the server's application.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def error_message(body: Any) -> str:
    """The upstream's ``message`` if the body is the documented ``{"message": ...}`` shape."""
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str):
            return message
    return ""


# Answers to a submit that do not tell whether the order was made. A 504 is a gateway that
# stopped waiting for the upstream application after our body went through: the application
# may have created the order after the gateway gave up, exactly like our own read timeout, so
# it is ambiguous (submit_unknown, then reconciliation), never a blind re-submit. A 502 stays
# transient-or-payload as the upstream documents it ("usually bad field values ... or a
# transient infrastructure fault; retry"): the documented answer of an application that
# refused, so retried with backoff and ending `failed`, where an operator looks. Other 5xx
# (500, 503) are the application's own refusals: retried. Preview and reads are safe to
# repeat: every 5xx is transient there.
AMBIGUOUS_SUBMIT_STATUS = frozenset({504})


def error_for_status(
    status_code: int, body: Any, retry_after: str | None = None, *, idempotent: bool = True
) -> UpstreamError | None:
    """The error an HTTP answer stands for, or None for a 2xx.

    401 reaching this point means the client already refreshed the token once: an auth failure.
    ``idempotent`` False (a submit): a status of ``AMBIGUOUS_SUBMIT_STATUS`` is ambiguous.
    """
    if 200 <= status_code < 300:
        return None
    reason = f"upstream_{status_code}"
    message = error_message(body) or f"upstream answered HTTP {status_code}"
    if status_code == 401 or status_code == 403:
        return AuthError("upstream_auth", message, status_code=status_code)
    if not idempotent and status_code in AMBIGUOUS_SUBMIT_STATUS:
        return AmbiguousError(f"submit_{status_code}", message, status_code=status_code)
    if status_code in RETRYABLE_STATUS or status_code >= 500:
        return RetryableError(
            reason, message, status_code=status_code, retry_after_s=parse_retry_after(retry_after)
        )
    return PermanentError(reason, message, status_code=status_code)


def error_for_exception(exc: Exception, *, idempotent: bool) -> UpstreamError:
    """The error a transport failure stands for.

    A non-idempotent call (submit) that may have reached the server is ambiguous: a timeout
    while reading, a dropped connection, a half-written request.
    """
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, NOT_SENT):
        reason = (
            "upstream_timeout" if isinstance(exc, httpx.TimeoutException) else "upstream_connect"
        )
        return RetryableError(reason, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        reason = "upstream_timeout"
    elif isinstance(exc, httpx.TransportError):
        reason = "upstream_disconnect"
    else:
        reason = "upstream_invalid_response"
    if not idempotent:
        return AmbiguousError(
            reason.replace("upstream_", "submit_"), f"{type(exc).__name__}: {exc}"
        )
    return RetryableError(reason, f"{type(exc).__name__}: {exc}")
