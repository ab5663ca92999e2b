"""The one error tree of the worker, split by what the caller should do next.

    OrderError
    ├── UpstreamError                 an upstream call did not succeed
    │   ├── RetryableError            try again later (429, 502, 503, 504, connect errors)
    │   │   └── UpstreamUnavailable   the upstream's trouble, not the order's: wait, spend no budget
    │   ├── PermanentError            never retry (400, 404, other 4xx)
    │   ├── AuthError                 credentials refused even with a fresh token
    │   └── AmbiguousError            the request may have been applied; do not resend blindly
    ├── InvalidInput                  a request cannot be accepted; nothing was written
    ├── IdempotencyError              an Idempotency-Key stops the request
    │   ├── KeyInFlight               the first request with the key is still running (409)
    │   └── KeyReused                 the key was used with a different request (422)
    ├── OrderNotFound                 no such order for this caller (404)
    ├── BatchNotFound                 no such batch for this caller (404)
    ├── WrongState                    the order's state does not allow the action (409)
    └── KeyAdminError                 an ``orders keys`` command cannot be done as asked

Each carries data (``status_code``, ``retry_after_s``, ``reason``, ``fields``), never a
message to parse. The HTTP API maps them to answers in ``worker.api.errors``.
"""

from __future__ import annotations

FieldErrors = list[dict[str, str]]
"""``[{"field": "orderItems.0.offer.id", "message": "Field required"}]``."""


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


class InvalidInput(OrderError):
    """The request cannot be accepted; nothing was written.

    Attributes:
        status_code: 400 (not JSON), 413 (too large) or 422 (invalid content).
        fields: ``[{"field", "message"}]`` naming what is wrong.
    """

    def __init__(
        self, message: str, fields: FieldErrors | None = None, *, status_code: int = 422
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or []
        self.status_code = status_code


class IdempotencyError(OrderError):
    """Base of the ``Idempotency-Key`` outcomes that stop a request."""


class KeyInFlight(IdempotencyError):
    """The first request with this key has not finished (409)."""


class KeyReused(IdempotencyError):
    """The key was first used with a different request (422)."""


class OrderNotFound(OrderError):
    """No such order for this caller (another caller's order is not found either)."""


class BatchNotFound(OrderError):
    """No such batch for this caller (another caller's batch is not found either)."""


class WrongState(OrderError):
    """The order is not in a state that allows the action (409)."""


class KeyAdminError(OrderError):
    """A key administration request is refused (name taken, unknown or revoked name).

    ``reason`` is ``name_taken``, ``unknown_name`` or ``revoked``; ``name`` the caller's name.
    """

    def __init__(self, reason: str, name: str) -> None:
        super().__init__(f"{reason}: {name}")
        self.reason = reason
        self.name = name
