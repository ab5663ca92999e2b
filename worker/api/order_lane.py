"""The polling lane: ``GET /v1/orders/{id}`` answered below the framework when it can be.

Callers poll the order view far more than they call anything else, and most of what a poll
cost was the framework around a 200-microsecond query: routing, dependency solving, three
middleware layers wrapping ``send``, and anyio's hop to a worker thread. This pure ASGI layer
sits outside all of it and answers a poll itself when everything about it is ordinary: a
``GET`` of one well-formed order id, a caller key the authenticator already trusts (its short
per-process cache), and an order of that caller. The answer is the same bytes and headers as
the route's (:mod:`worker.api.order_reads` makes both), a ``304`` when ``If-None-Match`` names
the ETag, and the same request metrics. On PostgreSQL the read runs on the event loop
(:mod:`worker.api.lane_reads`); on SQLite in a worker thread, as the route reads.

Anything else goes on to the app unchanged: a key not in the cache (the route looks it up and
answers 401 when it must), an operator key, an unknown or another caller's order (404), a
malformed id, a database error (the app's error handling), every other path and method. The
lane never answers an error itself, so the API has one set of error answers.
"""

from __future__ import annotations

import time

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.api.auth import Authenticator
from worker.api.deps import ID_PATTERN, in_connection
from worker.api.lane_reads import PgViews, conninfo
from worker.api.metrics import Metrics
from worker.api.order_reads import etag, not_modified, view_bytes
from worker.intake.callers import ROLE_CALLER
from worker.settings import Settings

log = structlog.get_logger(__name__)

PREFIX = "/v1/orders/"
ROUTE = "/v1/orders/{order_id}"
"""The route template the request metrics count a poll under (the route's own)."""


class OrderViewLane:
    """Answer ordinary polls of the order view; hand everything else to ``app``."""

    def __init__(
        self, app: ASGIApp, *, authenticator: Authenticator, metrics: Metrics, reads: LaneReads
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.metrics = metrics
        self.reads = reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            order_id = path[len(PREFIX) :]
            if (
                path.startswith(PREFIX)
                and ID_PATTERN.fullmatch(order_id)
                and await self._answer(scope, send, order_id)
            ):
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, send: Send, order_id: str) -> bool:
        """Answer the poll; False (nothing sent) when the app must answer it."""
        started = time.perf_counter()
        query = scope["query_string"]
        if b"\x00" in query or b"%00" in query:
            return False  # the request guard's 400
        authorization = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"if-none-match":
                if_none_match = value
        caller_id = self._trusted_caller(authorization)
        if caller_id is None:
            return False
        try:
            body = await self.reads.view_bytes(caller_id, order_id)
        except Exception as exc:  # the app's error handling answers it (and logs it)
            log.info("order_lane_read_failed", error=type(exc).__name__)
            return False
        if body is None:
            return False  # unknown, or another caller's: the route's 404
        tag = etag(body)
        headers = [(b"etag", tag.encode()), (b"cache-control", b"no-store")]
        inm = if_none_match.decode("latin-1") if if_none_match is not None else None
        if not_modified(inm, tag):
            status = 304
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        else:
            status = 200
            headers += [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        self.metrics.observe("GET", ROUTE, status, time.perf_counter() - started)
        return True

    def _trusted_caller(self, authorization: bytes | None) -> str | None:
        """The caller id of a ``Bearer`` key the authenticator trusts without a query."""
        if authorization is None:
            return None
        scheme, _, key = authorization.decode("latin-1").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None
        owner = self.authenticator.cached(key)
        return owner.id if owner is not None and owner.role == ROLE_CALLER else None


class LaneReads:
    """The lane's reads: on the event loop on PostgreSQL, else as the route reads (a worker
    thread, :func:`worker.api.deps.in_connection`). One per app; closed with it (lifespan)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        uri = conninfo(settings.database_url)
        self.pg = PgViews(uri, settings.api_read_connections) if uri is not None else None

    async def view_bytes(self, caller_id: str, order_id: str) -> bytes | None:
        """The caller's order view as JSON bytes, or None; raises on database trouble."""
        if self.pg is not None:
            return await self.pg.view_bytes(caller_id, order_id)
        return await in_connection(self.settings, view_bytes, caller_id, order_id)

    async def close(self) -> None:
        if self.pg is not None:
            await self.pg.close()
