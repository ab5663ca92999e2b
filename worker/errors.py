"""The one error tree of the worker, split by what the caller should do next.

    OrderError
    ├── UpstreamError                 an upstream call did not succeed
    │   ├── RetryableError            try again later (429, 502, 503, 504, connect errors)
    │   ├── PermanentError            never retry (400, 404, other 4xx)
    │   ├── AuthError                 credentials refused even with a fresh token
    │   └── AmbiguousError            the request may have been applied; do not resend blindly

Each carries data (``status_code``, ``retry_after_s``, ``reason``), never a message to parse.
"""

from __future__ import annotations


class OrderError(Exception):
    """Base of every error this package raises on purpose."""


class UpstreamError(OrderError):
    """An upstream call failed; ``reason`` is a short machine-readable code."""

    def __init__(
        self,
        reason: str,
        message: str = "",
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason
        self.status_code = status_code
        self.retry_after_s = retry_after_s


class RetryableError(UpstreamError):
    """Transient: the same request may succeed later."""


class PermanentError(UpstreamError):
    """The upstream refused the request for good (its message is kept)."""


class AuthError(UpstreamError):
    """The upstream refused our credentials even after one token refresh."""


class AmbiguousError(UpstreamError):
    """The request was sent but no answer came back: it may have been applied."""
