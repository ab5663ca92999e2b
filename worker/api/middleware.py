"""Pure ASGI middleware: request guards (body size, NUL bytes) and request metrics.

A client that hangs up before its body has arrived is not a server error: it is logged at
info and counted with status 499 (nginx's "client closed request"); no answer is sent.

Body limits hold whether or not a client declares the size: a ``Content-Length`` above the
limit is refused before anything is read, and a body streamed without one (chunked) is cut
off as soon as the bytes received pass the limit. Both answer 413. The limit is
``ORDERS_MAX_BATCH_BYTES`` for ``/v1/orders/batch`` and ``ORDERS_MAX_BODY_BYTES`` elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.upstream import ROOT_FIELD
from worker.api.errors import error_response
from worker.api.metrics import Metrics

log = structlog.get_logger(__name__)

BATCH_PATH = "/v1/orders/batch"
CLIENT_CLOSED_REQUEST = 499


class BodyTooLarge(HTTPException):
    """The request body passed its limit (413); raised from ``receive``."""

    def __init__(self, limit_bytes: int, setting: str) -> None:
        super().__init__(413, f"request body exceeds {limit_bytes} bytes ({setting})")
        self.fields = [{"field": ROOT_FIELD, "message": f"at most {limit_bytes} bytes"}]


class RequestGuard:
    """Refuse oversized bodies (413) and NUL bytes in the path or query string (400)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_batch_bytes: int) -> None:
        self.app = app
        self.limits = {
            False: (max_body_bytes, "ORDERS_MAX_BODY_BYTES"),
            True: (max_batch_bytes, "ORDERS_MAX_BATCH_BYTES"),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or any(b in scope["query_string"] for b in (b"%00", b"\x00")):
            response = error_response(
                400,
                "NUL characters are not allowed in URLs",
                [{"field": ROOT_FIELD, "message": "NUL in URL"}],
            )
            await response(scope, receive, send)
            return
        limit, setting = self.limits[scope["path"].rstrip("/") == BATCH_PATH]
        declared = _content_length(scope)
        if declared == -1 or (declared is not None and declared > limit):
            error = BodyTooLarge(limit, setting)
            response = (
                error_response(
                    400,
                    "invalid Content-Length header",
                    [{"field": "Content-Length", "message": "not a number"}],
                )
                if declared == -1
                else error_response(413, str(error.detail), error.fields)
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await error_response(413, str(exc.detail), exc.fields)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None if absent, -1 if not a non-negative integer."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else -1
    return None


class MetricsMiddleware:
    """Count and time every HTTP request by method, route template and status; absorb client
    disconnects (499)."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except ClientDisconnect:
            status = CLIENT_CLOSED_REQUEST
            log.info("client_disconnected", method=scope["method"], path=scope["path"])
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, self.clock() - started)
