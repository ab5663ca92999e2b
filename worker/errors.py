"""The one error tree of the worker, split by what the caller should do next.

    OrderError
    ├── UpstreamError                 an upstream call did not succeed
    │   ├── RetryableError            try again later (429, 502, 503, 504, connect errors)
    │   │   └── UpstreamUnavailable   the upstream's trouble, not the order's: wait, spend no budget
    │   ├── PermanentError            never retry (400, 404, other 4xx)
    │   ├── AuthError                 credentials refused even with a fresh token
    │   └── AmbiguousError            the request may have been applied; do not resend blindly
    └── TransitionConflict            the order moved on; another worker owns it

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


class UpstreamUnavailable(RetryableError):
    """The fleet may not call now, or the upstream pushed back for everyone (throttled, paused,
    failing): the order waits without spending its retry budget."""


class PermanentError(UpstreamError):
    """The upstream refused the request for good (its message is kept)."""


class AuthError(UpstreamError):
    """The upstream refused our credentials even after one token refresh."""


class AmbiguousError(UpstreamError):
    """The request was sent but no answer came back: it may have been applied."""


class TransitionConflict(OrderError):
    """A compare-and-set transition found the order in another state or lease."""
