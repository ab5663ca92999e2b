"""Every error answer has one shape: ``{"message": ..., "fields": [{"field", "message"}]}``.

The handlers map what the code raises to a status code:

    ApiError                   its own status (401, 404, 409, 413, ...)
    InvalidInput               400 (not JSON), 413 (too large) or 422 (invalid content)
    KeyReused / KeyInFlight    422 / 409 (Idempotency-Key)
    OrderNotFound              404
    WrongState                 409
    RequestValidationError     422 (query, path or header parameters, small JSON bodies)
    HTTPException              its status (404 unknown route, 405 wrong method)
    anything else              500, logged
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from schemas.upstream import ROOT_FIELD
from worker.errors import (
    BatchNotFound,
    FieldErrors,
    InvalidInput,
    KeyInFlight,
    KeyReused,
    OrderNotFound,
    WrongState,
)
from worker.intake.checks import describe

log = structlog.get_logger(__name__)

PARAM_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


class ApiError(Exception):
    """An error answer: ``status_code``, ``message``, named ``fields`` and extra headers."""

    def __init__(
        self,
        status_code: int,
        message: str,
        fields: FieldErrors | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.fields = fields or []
        self.headers = dict(headers or {})


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``content`` serialised with orjson (fast for big lists and batches)."""
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def error_response(
    status_code: int,
    message: str,
    fields: FieldErrors | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The error body with ``status_code``."""
    return json_response({"message": message, "fields": fields or []}, status_code, headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("query", "limit")`` -> ``limit``; ``("body", "orders", 3)`` -> ``orders.3``."""
    parts = list(loc)
    if parts and parts[0] in PARAM_SOURCES:
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or ROOT_FIELD


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.message, exc.fields, exc.headers)


async def _invalid_input(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidInput)
    return error_response(exc.status_code, exc.message, exc.fields)


async def _key_reused(_: Request, exc: Exception) -> Response:
    message = (
        "Idempotency-Key was already used with a different request; use a new key for a new request"
    )
    return error_response(422, message, [{"field": "Idempotency-Key", "message": message}])


async def _key_in_flight(_: Request, exc: Exception) -> Response:
    message = "a request with this Idempotency-Key is still being processed; retry later"
    return error_response(
        409, message, [{"field": "Idempotency-Key", "message": message}], {"Retry-After": "1"}
    )


async def _order_not_found(_: Request, exc: Exception) -> Response:
    return error_response(404, f"order {exc} not found")


async def _batch_not_found(_: Request, exc: Exception) -> Response:
    return error_response(404, f"batch {exc} not found")


async def _wrong_state(_: Request, exc: Exception) -> Response:
    return error_response(409, str(exc))


async def _validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = [
        {"field": field_path(err.get("loc", ())), "message": str(err.get("msg", ""))}
        for err in exc.errors()
    ]
    if any(err.get("type") == "json_invalid" for err in exc.errors()):
        return error_response(
            400, "malformed JSON body", [{"field": ROOT_FIELD, "message": "malformed JSON"}]
        )
    return error_response(422, describe("invalid request", fields), fields)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    fields: FieldErrors = getattr(exc, "fields", [])
    return error_response(exc.status_code, str(exc.detail), fields, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return error_response(500, "internal server error")


def install_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(KeyReused, _key_reused)
    app.add_exception_handler(KeyInFlight, _key_in_flight)
    app.add_exception_handler(OrderNotFound, _order_not_found)
    app.add_exception_handler(WrongState, _wrong_state)
    app.add_exception_handler(BatchNotFound, _batch_not_found)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
