"""Error classification by status code and exception type (never message text)."""

from __future__ import annotations

import httpx
import pytest

from worker.errors import AmbiguousError, AuthError, PermanentError, RetryableError
from worker.upstream.classify import error_for_exception, error_for_status, parse_retry_after


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, PermanentError),
        (404, PermanentError),
        (422, PermanentError),
        (401, AuthError),
        (429, RetryableError),
        (502, RetryableError),
        (503, RetryableError),
        (504, RetryableError),
    ],
)
def test_status_codes(code, kind):
    """Each documented status maps to what should happen next."""
    error = error_for_status(code, {"message": "Bad Gateway"})
    assert isinstance(error, kind) and error.status_code == code


@pytest.mark.parametrize(
    ("code", "kind"),
    [(504, AmbiguousError), (502, RetryableError), (500, RetryableError), (503, RetryableError)],
)
def test_a_gateway_timeout_to_a_submit_is_ambiguous(code, kind):
    """A 504 to a submit may hide an order the upstream made after its gateway gave up:
    ambiguous (reconciled, never re-sent); 502 stays as documented; a preview's 504 retries."""
    error = error_for_status(code, {"message": "Gateway"}, idempotent=False)
    assert isinstance(error, kind) and error.status_code == code
    assert isinstance(error_for_status(code, None, idempotent=True), RetryableError)
    if kind is AmbiguousError:
        assert error.reason == "submit_504"


def test_success_is_no_error():
    assert error_for_status(200, {}) is None


def test_message_kept_and_reason_from_code():
    """The upstream message is kept for the operator; the reason comes from the code."""
    error = error_for_status(400, {"message": "orderItems: required"})
    assert (error.reason, error.message) == ("upstream_400", "orderItems: required")


def test_retry_after_header():
    """Retry-After in seconds or as an HTTP date becomes a number of seconds."""
    assert error_for_status(429, None, "3").retry_after_s == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("t"),
        httpx.RemoteProtocolError("Server disconnected"),
        httpx.ReadError("reset"),
        httpx.WriteTimeout("w"),
    ],
)
def test_transport_failures_after_sending_are_ambiguous_for_submit(exc):
    """A submit that may have reached the server is ambiguous; the same on preview retries."""
    assert isinstance(error_for_exception(exc, idempotent=False), AmbiguousError)
    assert isinstance(error_for_exception(exc, idempotent=True), RetryableError)


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("t"), httpx.PoolTimeout("p")]
)
def test_failures_before_sending_are_retryable_even_for_submit(exc):
    """Nothing reached the server: a submit may safely be retried."""
    assert isinstance(error_for_exception(exc, idempotent=False), RetryableError)
